"""The README's `l2b compare` example, run as shown, its last-epoch table written into README.md
and RESULTS.md between the "compare-example" markers.

    python benchmarks/compare_example.py
"""

from __future__ import annotations

import shlex
import time

from results_md import record

ARGS = ("compare --data digits --methods ce,l2rw,l2b --noise symmetric:0.2,symmetric:0.4 --seeds 3 "
        "--epochs 30 --val-per-class 10 --batch-size 64 --clip-grad-norm 1.0 --out runs/grid")


def main() -> None:
    from pathlib import Path

    from l2b.cli import main as cli

    start = time.perf_counter()
    if cli(shlex.split(ARGS)) != 0:
        raise SystemExit("l2b compare failed")
    seconds = time.perf_counter() - start
    summary = (Path("runs/grid") / "summary.md").read_text()
    table = summary[summary.index("### Test accuracy (%) at the last epoch"):].split("\n", 2)[2]
    table = "\n".join(line.replace(" (n=3)", "") for line in table.strip().splitlines()) + "\n"
    block = (f"`l2b {ARGS}`: last-epoch test accuracy %, mean ± std over 3 seeds, the last column s / epoch; "
             f"{seconds:.0f} s on this machine (2 cores, one thread per run).\n\n" + table)
    record("compare-example", "## The README's compare example", block, {"seconds": round(seconds, 1)},
           "python benchmarks/compare_example.py", readme=True)


if __name__ == "__main__":
    main()
