"""The consoles every command prints to."""

from rich.console import Console

#: Results and tables.
console = Console()
#: Errors, warnings and progress bars.
err_console = Console(stderr=True)
