"""``l2b demo`` (``make demo``): CE, L2RW and L2B on the bundled real digits, three seeds each."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .trainer import train

DEMO = dict(data="digits", noise="symmetric:0.4", model="mlp", width=256, val_per_class=10,
            epochs=30, batch_size=64, lr=0.1, warmup_epochs=0)


def run_demo(methods: list[str], seeds: int, out: str, threads: int | None = None) -> str:
    """CE, L2RW and L2B on the bundled real digits with 40% symmetric noise: a results table."""
    import statistics

    def mean_std(v: list[float]) -> str:
        return f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}"

    rows = []
    for method in methods:
        runs = []
        for seed in range(seeds):
            cfg = TrainConfig(**{**DEMO, "method": method, "seed": seed,
                                 "out": str(Path(out) / f"{method}-seed{seed}"), "progress": "none",
                                 "threads": threads})
            runs.append(train(cfg))
            print(f"{method} seed {seed}: test acc {runs[-1]['test_acc_last']:.1f}% (last), "
                  f"{runs[-1]['test_acc_at_best_val']:.1f}% (best val)", flush=True)
        rows.append((method, [r["test_acc_last"] for r in runs], [r["test_acc_at_best_val"] for r in runs],
                     statistics.mean(r["epoch_seconds"] for r in runs) * DEMO["epochs"]))
    rate = statistics.mean(r["noise_rate"] for r in runs)
    print(f"\ndigits: 1,197 noisy train + 100 clean val (10/class) / 500 test; {DEMO['noise']} "
          f"(realised flip rate {rate:.1%}); MLP; {DEMO['epochs']} epochs; {seeds} seeds\n")
    table = ["| method | test acc %, last epoch | test acc %, best-val epoch | train s / run |", "|---|---|---|---|"]
    table += [f"| {method} | {mean_std(last)} | {mean_std(best)} | {secs:.1f} |" for method, last, best, secs in rows]
    print("\n".join(table))
    return "\n".join(table) + "\n"
