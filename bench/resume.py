"""Resume a big label table from a manifest: the label driver's peak memory and time.

Generates a label table of --rows rows (paths that need not exist: they are done) and a CSV
manifest of those paths plus --new small real JPEGs, then runs `cgi2real label --manifest` in a
fresh process and reports its peak RSS (ru_maxrss) and wall time. Two more fresh processes give
the floor and the part that grows with the table: one only imports what the label driver imports,
one only computes the set difference (`sources.read_manifest`, `labeled_paths`, `drop_labeled`).

    python bench/resume.py --rows 1000000 --new 1000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import DEFAULT_GEOMETRY  # noqa: E402
from cgi2real.formats.label_table import LabelTable, to_table  # noqa: E402
from cgi2real.formats.package import read_model_package  # noqa: E402
from cgi2real.model.networks import build_model, package_config, package_from_bytes, save_model_package
from cgi2real.storage.locations import locate  # noqa: E402

PART_ROWS = 100_000
IMAGE_SIZE = 75  # the smallest Inception v3 input: the new images are few, their speed is not the point

# VmHWM: the peak resident set; most of the imports' share is the libraries' code (RssFile).
PEAK = "import sys; print('peak_rss_mb', int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024, file=sys.stderr)"
DRIVER = f"""
import sys
from cgi2real.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
{PEAK}
sys.exit(code)
"""
IMPORTS = f"import cgi2real.cli, cgi2real.stages.label, ray, ray.data\n{PEAK}"
# Only pyarrow and cgi2real.storage.listing: the part files are globbed.
DIFFERENCE = f"""
import glob, sys
from cgi2real.storage.listing import drop_labeled, labeled_paths, read_manifest
from cgi2real.storage.locations import locate
source = read_manifest(sys.argv[1])
print("  reading the manifest: peak RSS", int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024, "MB")
parts = sorted(glob.glob(sys.argv[2] + "/part-*.parquet"))
todo = drop_labeled(source.rows, source.root.scheme, labeled_paths(locate(sys.argv[2]).fs, parts))
print(f"difference {{todo.num_rows}} new of {{source.rows.num_rows}}")
{PEAK}
"""


def make_inputs(workdir: str, rows: int, new: int) -> tuple[str, str, str]:
    """(package, manifest CSV, label table) in `workdir`: `rows` done paths plus `new` real JPEGs."""
    import torch
    from PIL import Image

    package = os.path.join(workdir, "package")
    torch.manual_seed(0)
    model = build_model(len(DEFAULT_CLASSES), IMAGE_SIZE, "none")
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), IMAGE_SIZE, DEFAULT_GEOMETRY), package)
    model_id = package_from_bytes(*read_model_package(package), package).model_id

    os.makedirs(os.path.join(workdir, "new"), exist_ok=True)
    rng = np.random.default_rng(0)
    fresh = []
    for i in range(new):
        path = os.path.join(workdir, "new", f"{i:06d}.jpg")
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path, quality=85)
        fresh.append(path)

    old = [os.path.join(workdir, "old", f"{d:04d}", f"{i:09d}.jpg") for i in range(rows) for d in [i // 10_000]]
    table = LabelTable(locate(os.path.join(workdir, "labels")))
    probs = rng.dirichlet(np.ones(len(DEFAULT_CLASSES)), size=PART_ROWS).astype(np.float32)
    for start in range(0, rows, PART_ROWS):
        uris = old[start:start + PART_ROWS]
        at = np.full(len(uris), int(time.time() * 1e6), dtype=np.int64)
        table.commit(to_table(uris, probs[: len(uris)], [None] * len(uris), at, list(DEFAULT_CLASSES), model_id))

    manifest = os.path.join(workdir, "manifest.csv")
    order = rng.permutation(rows + new)  # a manifest comes in any order
    listed = old + fresh
    with open(manifest, "w") as f:
        f.write("path\n")
        f.writelines(listed[i] + "\n" for i in order)
    return package, manifest, table.folder.path


def measured(code: str, args: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB, seconds, stdout) of a fresh Python process running `code` with `args`."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.monotonic() - start
    peaks = [line for line in result.stderr.splitlines() if line.startswith("peak_rss_mb")]
    if result.returncode != 0 or not peaks:
        sys.exit(f"failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return float(peaks[-1].split()[1]), seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows already in the table")
    parser.add_argument("--new", type=int, default=1_000, help="new images in the manifest")
    parser.add_argument("--workdir", help="where to generate (default: a temporary folder, deleted after)")
    parser.add_argument("--label-only", action="store_true", help="measure the label driver only (as CI does, at a reduced size)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgi2real-bench-resume-") as tmp:
        workdir = args.workdir or tmp
        start = time.monotonic()
        package, manifest, labels = make_inputs(workdir, args.rows, args.new)
        print(f"generated a {args.rows}-row table and a {args.rows + args.new}-path manifest in {time.monotonic() - start:.1f} s")

        if not args.label_only:  # before the driver labels the new images
            floor, floor_s, _ = measured(IMPORTS, [])
            diff, diff_s, diff_out = measured(DIFFERENCE, [manifest, labels])
        peak, seconds, output = measured(DRIVER, ["label", "--manifest", manifest, "--model", package, "--out", labels])
        print(output, end="")
        print(f"label driver:        peak RSS {peak:.0f} MB, {seconds:.1f} s end to end (start-up, resume, labeling {args.new})")
        if args.label_only:
            return
        print(diff_out, end="")
        print(f"imports alone:       peak RSS {floor:.0f} MB, {floor_s:.1f} s (cgi2real.cli, cgi2real.stages.label, ray, ray.data)")
        print(f"difference alone:    peak RSS {diff:.0f} MB, {diff_s:.1f} s (read manifest + table paths, Arrow anti-join)")
        print(f"driver above imports: {peak - floor:.0f} MB")


if __name__ == "__main__":
    main()
