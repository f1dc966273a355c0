"""Labeling at bucket scale: transient S3 faults retried (through a fault-injecting proxy in front of
moto), manifests in each supported form, and the set difference that resumes a big table."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import invoke
from tests.storage.test_listing import write_inventory


def rows_by_path(out) -> dict:
    return {r["path"]: r for r in pq.read_table(out).to_pylist()}


def assert_same_rows(table: dict, reference: dict):
    assert set(table) == set(reference)
    for path, row in reference.items():
        assert (table[path]["label"], table[path]["error"]) == (row["label"], row["error"]), path
        if row["error"] is None:
            np.testing.assert_allclose(table[path]["confidence"], row["confidence"], atol=5e-4)  # other batch-mates: float32 noise (~1e-4)


# --- Transient faults --------------------------------------------------------------------------


@pytest.mark.slow
def test_faults_within_the_retries_change_nothing_and_lasting_ones_are_retried_by_a_rerun(
    ray_cluster, proxy, photos, package, tmp_path
):
    source = "s3://scale-photos/photos"
    run = lambda out, code=0: invoke("label", source, "--model", package, "--out", out, "--s3-endpoint", proxy.endpoint, "--batch-size", 4, code=code)  # noqa: E731
    run(tmp_path / "clean")
    reference = rows_by_path(tmp_path / "clean")
    assert len(reference) == 15 and sum(r["error"] is not None for r in reference.values()) == 3

    images = [k for k in photos if not k.startswith("photos/zoo/")]
    passing = {images[0]: "slowdown", images[1]: "reset", images[2]: "stall", "photos/zoo/truncated.jpg": "slowdown"}
    lasting = {images[3]: "slowdown", images[4]: "reset"}
    for key, kind in passing.items():  # 4 answers: more than the S3 client's own 3 tries
        proxy.add(f"scale-photos/{key}", kind, times=1 if kind == "stall" else 4)
    for key, kind in lasting.items():
        proxy.add(f"scale-photos/{key}", kind)
    failed = run(tmp_path / "labels", code=1)
    assert all(proxy.hits[f"scale-photos/{k}"] >= (1 if kind == "stall" else 4) for k, kind in passing.items())  # every fault was served
    assert "2 images could not be read through every retry" in failed.stderr and "unavailable 2" in failed.stdout
    lost = {f"s3://scale-photos/{k}" for k in lasting}
    assert_same_rows(rows_by_path(tmp_path / "labels"), {p: r for p, r in reference.items() if p not in lost})  # no rows for them, all else as without faults

    proxy.clear()
    again = run(tmp_path / "labels").stdout
    assert "labeled   2 now, 13 before" in again
    assert_same_rows(rows_by_path(tmp_path / "labels"), reference)


# --- Manifests ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_labeling_starts_while_a_slow_listing_goes_on(ray_cluster, proxy, s3_client, photos, package, tmp_path, monkeypatch):
    """A listing still running after LISTING_HEAD_START: what it has found is labeled in a first
    wave, the rest in later ones; the table ends up exactly as one wave would leave it."""
    s3_client.create_bucket(Bucket="scale-waves")
    images = [k for k in photos if k.endswith(".jpg") and "/zoo/" not in k]
    for i, key in enumerate(images):  # one image per folder
        body = s3_client.get_object(Bucket="scale-photos", Key=key)["Body"].read()
        s3_client.put_object(Bucket="scale-waves", Key=f"tree/f{i:02d}/{os.path.basename(key)}", Body=body)
    monkeypatch.setattr("cgi2real.storage.locations.LIST_THREADS", 2)  # the top level, then its 12 folders two at a time
    monkeypatch.setattr("cgi2real.stages.label.LISTING_HEAD_START", 0.5)
    proxy.latency = 0.5  # per request: the listing takes about 4 s
    try:
        output = invoke("label", "s3://scale-waves/tree", "--model", package, "--out", tmp_path / "waves", "--s3-endpoint", proxy.endpoint).stdout
    finally:
        proxy.latency = 0.0
    assert "labeling those while the listing goes on" in output and "images listed so far; labeling the next" in output, output
    assert f"{len(images)} images under s3://scale-waves/tree" in output
    paths = pq.read_table(tmp_path / "waves").column("path").to_pylist()
    assert sorted(paths) == sorted(f"s3://scale-waves/tree/f{i:02d}/{os.path.basename(k)}" for i, k in enumerate(images))


@pytest.mark.slow
def test_label_an_inventory_manifest_with_missing_and_other_keys(ray_cluster, s3_client, s3_endpoint, photos, package, tmp_path):
    rows = [("scale-photos", k, 1) for k in photos[:6]] + [("scale-photos", "photos/never-uploaded.jpg", 1), ("scale-photos", "photos/x.txt", 1)]
    manifest = write_inventory(s3_client, "CSV", rows)
    output = invoke("label", "--manifest", manifest, "--model", package, "--out", tmp_path / "out", "--s3-endpoint", s3_endpoint).stdout
    table = rows_by_path(tmp_path / "out")
    assert set(table) == {f"s3://scale-photos/{k}" for _, k, _ in rows[:7]}
    assert table["s3://scale-photos/photos/never-uploaded.jpg"]["error"] == "file not found"
    assert "images    7 in " in output and "(3 other files skipped)" in output  # x.txt, the delete marker, the old version


# --- The set difference ------------------------------------------------------------


@pytest.mark.slow
def test_resume_benchmark_at_reduced_size_labels_only_the_new_images(tmp_path):
    """bench/resume.py: a 50,000-row table against a 50,000-path manifest of which 20 are new."""
    result = subprocess.run(
        [sys.executable, "bench/resume.py", "--rows", "50000", "--new", "20", "--workdir", str(tmp_path), "--label-only"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "labeled   20 now, 50000 before" in result.stdout
    table = pq.read_table(tmp_path / "labels", columns=["path", "error"])
    assert table.num_rows == 50_020
    new = [p for p in table.column("path").to_pylist() if "/new/" in p]
    assert len(new) == 20 and table.filter(pa.compute.is_valid(table["error"])).num_rows == 0
