"""Allow ``python -m casa``."""

from casa.cli import main

main()
