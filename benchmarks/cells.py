"""Carry a benchmark grid's finished cells between machines and sessions: what its summary reads
(config.json, metrics.json, meta_set.json, and the last epoch's weights without their history),
packed into one compressed file that git can hold; unpacked, the grid's command skips those
cells and trains the rest.

    python benchmarks/cells.py pack runs/bench-paper-regime benchmarks/results/paper_regime_cells.tar.xz
    python benchmarks/cells.py unpack benchmarks/results/paper_regime_cells.tar.xz runs/bench-paper-regime
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np

KEEP = ("config.json", "metrics.json", "meta_set.json")
WEIGHT_KEYS = ("alpha", "beta", "pseudo_labels", "is_noisy", "noisy", "true", "train_index")


def pack(grid: Path, archive: Path) -> int:
    cells = sorted(p.parent for p in grid.rglob("metrics.json"))
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz") as tar:
        for cell in cells:
            rel = cell.relative_to(grid)
            for name in KEEP:
                if (cell / name).is_file():
                    tar.add(cell / name, arcname=str(rel / name))
            if (cell / "weights.npz").is_file():  # the last epoch only: what the tables read
                w = np.load(cell / "weights.npz")
                buf = io.BytesIO()
                np.savez(buf, **{k: w[k] for k in WEIGHT_KEYS if k in w.files})
                info = tarfile.TarInfo(str(rel / "weights.npz"))
                info.size = buf.getbuffer().nbytes
                buf.seek(0)
                tar.addfile(info, buf)
    return len(cells)


def unpack(archive: Path, grid: Path) -> int:
    with tarfile.open(archive, "r:xz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith(("/", ".."))
                   and ".." not in Path(m.name).parts]
        # a cell this machine has begun or finished is left as it is
        fresh = [m for m in members if not (grid / m.name).parent.exists()]
        tar.extractall(grid, members=fresh, filter="data")
    return len({str(Path(m.name).parent) for m in fresh})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("grid", type=Path)
    p.add_argument("archive", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("archive", type=Path)
    u.add_argument("grid", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        print(f"packed {pack(args.grid, args.archive)} finished cells into {args.archive} "
              f"({args.archive.stat().st_size / 2**20:.1f} MiB)")
    else:
        print(f"unpacked {unpack(args.archive, args.grid)} cells into {args.grid}")


if __name__ == "__main__":
    main()
