"""The review page of a big label table: where its time goes.

Generates a label table of --rows rows in files of 100,000 (row groups of 16,384, as `label`
writes them) with unique paths, of which the first --images are real 400x300 JPEGs, then times, in this process:
reading every column of every row (what a page built from the whole table would start with); the
review's own reads of the table (the counting columns of every row, then the row groups of the
rows it shows); and the whole `review.run` (those reads, the images, thumbnails, plot and page).

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

from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import ReviewConfig  # noqa: E402
from cgi2real.formats.label_table import LabelTable, to_table  # noqa: E402
from cgi2real.stages.review import lowest_rows, read_counts, read_tiles, run, sample_rows  # noqa: E402
from cgi2real.storage.locations import locate  # noqa: E402

PART_ROWS = 100_000


def make_table(folder: str, images: list[str], rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    table = LabelTable(locate(folder))
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        probs = rng.dirichlet([1, 1, 1], size=n).astype(np.float32)
        errors = [None if rng.random() > 0.001 else "truncated" for _ in range(n)]
        # unique paths, as in a real table; only the first len(images) exist (the rest: placeholders)
        paths = [images[start + i] if start + i < len(images) else os.path.join(os.path.dirname(images[0]), f"{start + i:07d}.jpg") for i in range(n)]
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
        table = LabelTable(locate(os.path.join(tmp, "table")))
        parts = table.part_files()
        counts = read_counts(table, parts)
        rows = np.unique(np.concatenate([sample_rows(counts.label == k, 24, rng) for k in range(3)] + [lowest_rows(counts, 48)]))
        read_tiles(table, parts, counts, rows)
        reads = time.perf_counter() - start
        start = time.perf_counter()
        shown = run(ReviewConfig(table=os.path.join(tmp, "table"), out=os.path.join(tmp, "review")))
        review = time.perf_counter() - start
    print(f"read every column of every row: {read_all:.2f} s")
    print(f"the review's reads of the table (counting columns, {len(rows)} rows' groups): {reads:.2f} s ({reads / read_all:.2f} of the whole read)")
    print(f"the whole review page ({shown['thumbnails']} thumbnails, {shown['placeholders']} placeholders): {review:.2f} s")


if __name__ == "__main__":
    main()
