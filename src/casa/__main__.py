"""Allow ``python -m casa``."""

from casa.cli import command

command()
