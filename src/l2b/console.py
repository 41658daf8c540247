"""What l2b says on the console besides its results: warnings (the run goes on) and errors (it
stops), each one line, and each said once under torchrun (by rank 0)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_python_format_warning = warnings.formatwarning


def first_rank() -> bool:
    """Whether this process speaks: the only one, or rank 0 of a torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def warn(text: str) -> None:
    """A warning on stderr, one line, that the run goes on after."""
    if first_rank():
        print(f"l2b: warning: {text}", file=sys.stderr, flush=True)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """l2b's own ``warnings.warn`` as one line, as its errors are; anyone else's as Python writes
    them (the CLI installs it as ``warnings.formatwarning``)."""
    if Path(filename).resolve().is_relative_to(PACKAGE):
        return f"l2b: warning: {message}\n" if first_rank() else ""
    return _python_format_warning(message, category, filename, lineno, line)


def one_line(err: BaseException) -> str:
    """An error as one line: an OSError as its message and file (no "[Errno N]")."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    return " ".join(str(err).split("\n"))
