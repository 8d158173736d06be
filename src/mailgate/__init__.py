"""mailgate: a secure mail gateway."""
