"""The consoles every command prints to.

On a terminal rich wraps to its width. Elsewhere (a pipe, a file, a notebook's ``!casa``)
it would wrap and cut everything at 80 columns, so that cluster names and URLs could not be
copied: there lines are as long as they are (``$COLUMNS`` still sets a width).
"""

import os
import sys

from rich.console import Console

#: The width when not on a terminal and ``$COLUMNS`` is not set: no line is cut.
UNLIMITED = 1000


def _width(stream) -> int | None:
    if os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()):
        return None  # rich's own choice: the terminal's width, or $COLUMNS
    return UNLIMITED


#: Results and tables.
console = Console(width=_width(sys.stdout))
#: Errors, warnings and progress bars.
err_console = Console(stderr=True, width=_width(sys.stderr))
