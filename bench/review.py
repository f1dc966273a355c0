"""The review page of a big label table: time against reading the whole table once.

Generates a label table of --rows rows in files of 100,000 (row groups of 16,384, as `label`
writes them) whose paths cycle over --images small real JPEGs, then times, in this process:
reading every column of every row (what a page built from the whole table would start with), and
`review.run` (counting columns of every row, then only the row groups of the rows it shows, their
images and thumbnails). Prints both and their ratio.

    python bench/review.py --rows 1000000
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgi2real.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.config import ReviewConfig  # noqa: E402
from cgi2real.label import LabelTable, to_table  # noqa: E402
from cgi2real.review import run  # noqa: E402
from cgi2real.storage import locate  # noqa: E402

PART_ROWS = 100_000


def make_table(folder: str, images: list[str], rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    table = LabelTable(locate(folder))
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        probs = rng.dirichlet([1, 1, 1], size=n).astype(np.float32)
        errors = [None if rng.random() > 0.001 else "truncated" for _ in range(n)]
        paths = [images[(start + i) % len(images)] for i in range(n)]
        table.commit(to_table(paths, probs, errors, np.zeros(n, np.int64), list(DEFAULT_CLASSES), "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=200, help="distinct real JPEGs the rows point at")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgi2real-bench-") as tmp:
        rng = np.random.default_rng(1)
        images = []
        for i in range(args.images):
            path = os.path.join(tmp, "images", f"{i:04d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(path, quality=90)
            images.append(path)
        made = time.perf_counter()
        make_table(os.path.join(tmp, "table"), images, args.rows)
        print(f"table of {args.rows} rows written in {time.perf_counter() - made:.1f} s")
        start = time.perf_counter()
        whole = pq.read_table(os.path.join(tmp, "table"))
        read_all = time.perf_counter() - start
        del whole
        start = time.perf_counter()
        shown = run(ReviewConfig(table=os.path.join(tmp, "table"), out=os.path.join(tmp, "review")))
        review = time.perf_counter() - start
    print(f"read every column of every row: {read_all:.2f} s")
    print(f"review page ({shown['thumbnails']} thumbnails, {shown['placeholders']} placeholders): {review:.2f} s")
    print(f"review / whole read: {review / read_all:.2f}")


if __name__ == "__main__":
    main()
