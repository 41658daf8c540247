"""Writing a benchmark's table into a Markdown file (RESULTS.md, README.md) between its markers."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, name: str, block: str, heading: str) -> None:
    """Put ``block`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``,
    replacing what was there; the first time, append it under ``heading``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else ""
    new = f"{begin}\n{block}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + new + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + new + "\n"
    path.write_text(text)
