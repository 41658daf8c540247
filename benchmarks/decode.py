"""Decoding your own photos: the time to read one image file into a training crop, with the JPEG
decoded whole and then shrunk (as the papers' datasets are read) against decoded at a reduced scale
(Pillow's draft mode, what `folder:` and `csv:` datasets do), and how far the two crops lie apart.

    python benchmarks/decode.py [--repeats 20]
    python benchmarks/decode.py --quick    # one 1024×768 photo, 2 reads, nothing written

The photos are made here (a smooth scene with fine texture, saved as JPEG at quality 90), one per
size: a 12-megapixel phone photo, a 3-megapixel one, and one already near the crop.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from results_md import record

SIZES = ((4000, 3000), (2048, 1536), (320, 240))
CROP = 224


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: gradients and shapes with a little sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scene = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37.0) * np.cos(yy / 53.0)], axis=-1)
    noise = rng.normal(0, 0.03, size=scene.shape).astype(np.float32)
    return ((scene + noise).clip(0, 1) * 255).astype(np.uint8)


def time_item(dataset, repeats: int) -> float:
    """Median seconds to read item 0 into a crop, over ``repeats`` reads after one warm-up."""
    dataset[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dataset[0]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one 1024×768 photo, 2 reads; prints, writes nothing")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    sizes, args.repeats = (((1024, 768),), 2) if args.quick else (SIZES, args.repeats)
    import torch
    from PIL import Image

    from l2b.data.images import ImageFiles

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            path = Path(tmp) / f"photo-{width}x{height}.jpg"
            Image.fromarray(photo(width, height)).save(path, quality=90)
            whole = ImageFiles([(path, 0)], CROP, train=False)
            drafted = ImageFiles([(path, 0)], CROP, train=False, own_photos=True)
            gap = float((whole[0][0] - drafted[0][0]).abs().mul(whole.std).max())  # in [0, 1] units
            rows.append({"size": f"{width}×{height}", "megapixels": round(width * height / 1e6, 1),
                         "whole_s": time_item(whole, args.repeats), "draft_s": time_item(drafted, args.repeats),
                         "max_pixel_gap": gap})
    lines = [f"One image file read into a {CROP}-px centre crop (`l2b.data.images.ImageFiles`, one thread, median of "
             f"{args.repeats} reads; {platform.machine()}, {platform.processor() or 'cpu'}). 'whole': the JPEG decoded "
             f"whole, then resized; 'draft': decoded at 1/2, 1/4 or 1/8 scale first (Pillow's draft mode: "
             f"`folder:` and `csv:` datasets). Gap: the largest difference of one pixel value between the two "
             f"crops, on a 0–1 scale.", "",
             "| photo | whole, ms | draft, ms | speed-up | largest pixel gap |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} ({r['megapixels']} MP) | {1000 * r['whole_s']:.1f} | {1000 * r['draft_s']:.1f} | "
                     f"{r['whole_s'] / r['draft_s']:.1f}× | {r['max_pixel_gap']:.3f} |")
    block = "\n".join(lines) + "\n"
    print(block)
    if args.quick:
        return
    record("decode", "## Decoding your own photos", block, {"rows": rows, "crop": CROP, "repeats": args.repeats},
           f"python benchmarks/decode.py --repeats {args.repeats}")


if __name__ == "__main__":
    main()
