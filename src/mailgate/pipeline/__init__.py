"""The scanning pipeline: checks run after DATA and before the reply; rules decide."""
