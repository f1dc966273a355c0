"""Fuzz: a few hundred mutated JPEG/PNG/WebP files through the labeling decoder and the training
loader, each giving exactly one row (labeling) or one kept-or-skipped image (training), in a process
whose memory stays bounded."""

import json
import os
import subprocess
import sys

from tests.fuzz_images import write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = 300
PEAK_GROWTH_KIB = 400 * 1024  # over the warmed-up process; the 20000x1 strip alone took 1.6 GB before


def test_mutated_files_give_one_row_each_with_bounded_memory(tmp_path):
    paths = write(str(tmp_path / "fuzz"), FILES)
    run = subprocess.run([sys.executable, "-m", "tests.fuzz_images", str(tmp_path / "fuzz")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["files"] == len(paths) == FILES
    labeled = result["labeled"]
    assert [row["path"] for row in labeled] == paths  # one row per file, in order, none dropped
    for row in labeled:
        assert (row["error"] == "") or row["error"].split(":")[0] in {"not an image", "truncated", "too large", "cannot decode", "empty file"}, row
    reasons = {row["error"].split(":")[0] for row in labeled}
    assert "" in reasons and len(reasons) >= 3, reasons  # the mutants reach both usable and several failure paths
    assert len(result["trained"]) == FILES and 0 < sum(result["trained"]) < FILES  # each kept or skipped-and-counted
    growth = result["peak_kib"] - result["baseline_kib"]
    assert growth < PEAK_GROWTH_KIB, f"peak memory grew by {growth // 1024} MiB"
