"""The repository speaks for itself: no reference a reader cannot follow."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a tracker's issue number, a session's scratch file, a tool of the developers' machines
UNFOLLOWABLE = re.compile(r"\bissues? ?#?\d+\b|/tmp/defaults\.sh|\blent (GPU|H\d+)|farm-studio", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / n for n in names.splitlines() if Path(n).suffix in (".py", ".md", ".sh", ".yaml", ".toml", "")]
    return [f for f in files if f.is_file() and f.name != Path(__file__).name]


def test_no_reference_a_reader_cannot_follow():
    hits = []
    for f in tracked_text_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if UNFOLLOWABLE.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
