"""The README's quick-start table: `l2b demo` (CE, L2RW and L2B on the bundled digits, 3 seeds),
written into README.md and RESULTS.md between the "demo" markers, with its wall time and the
machine's state (the load average when it started: the timing is only comparable on a quiet
machine).

    python benchmarks/demo.py
"""

from __future__ import annotations

import os
import time

from results_md import record


def main() -> None:
    from l2b.demo import run_demo

    load = os.getloadavg()[0]
    start = time.perf_counter()
    table = run_demo(["ce", "l2rw", "l2b"], 3, "runs/demo")
    seconds = time.perf_counter() - start
    block = (f"`make demo` (`l2b demo`: 3 seeds, one torch thread per run, the default on 2 cores) took {seconds:.0f} s "
             f"once `.venv` existed, on {os.cpu_count()} cores with a load average of {load:.1f} when it started "
             f"({'a quiet' if load < 0.5 else 'a busy'} machine; the s / run column is that machine's).\n\n" + table)
    record("demo", "## Quick-start demo", block, {"seconds": round(seconds, 1), "load_average": load},
           "python benchmarks/demo.py", readme=True)


if __name__ == "__main__":
    main()
