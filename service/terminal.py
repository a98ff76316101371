"""Consoles for the command line: tables print whole in CI logs and pipes, not cut to `exa…`.

rich sizes output to the terminal, and to 80 columns when there is none, which truncates wide tables'
headers and cells. Without a terminal (and without an explicit COLUMNS) the width is unbounded instead:
a table then takes its natural width, and log readers can scroll.
"""

from __future__ import annotations

import os

from rich.console import Console

PIPE_WIDTH = 1000


def console(stderr: bool = False) -> Console:
    """A Console for stdout (or stderr) that never truncates tables when the output is not a terminal."""
    out = Console(stderr=stderr)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(stderr=stderr, width=PIPE_WIDTH)
    return out
