"""`python -m mailgate`: the same as the `mailgate` command."""

from mailgate.cli.main import main

main()
