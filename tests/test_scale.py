"""Labeling at bucket scale: transient S3 faults retried (through a fault-injecting proxy in front of
moto), manifests in each supported form, and the set difference that resumes a big table."""

import gzip
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cgi2real.data import READ_ATTEMPTS, read_file
from cgi2real.errors import InputError
from cgi2real.sources import drop_labeled, labeled_paths, list_images, read_manifest
from cgi2real.storage import is_transient, locate, s3_filesystem
from tests.conftest import upload_folder
from tests.labeling import invoke, make_package, write_zoo
from tests.s3_faults import FaultProxy

TIMEOUT = "2"  # seconds without a byte before the S3 client abandons a request (a stall)


@pytest.fixture(scope="module")
def package(image_root, tmp_path_factory):
    return make_package(str(tmp_path_factory.mktemp("pkg") / "pkg"), image_root(16, 96))


@pytest.fixture(scope="module")
def photos(image_root, s3_client, tmp_path_factory):
    """A bucket "scale-photos" with 12 generated JPEGs under photos/ and three broken files; returns their keys."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    shutil.copytree(image_root(4, 96), folder, ignore=shutil.ignore_patterns("_masks"))
    write_zoo(str(folder / "zoo"))
    for name in os.listdir(folder / "zoo"):
        if name not in ("truncated.jpg", "text.jpg", "zero_bytes.jpg"):
            os.remove(folder / "zoo" / name)
    s3_client.create_bucket(Bucket="scale-photos")
    upload_folder(s3_client, str(folder), "scale-photos", "photos")
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket="scale-photos")["Contents"])
    assert len(keys) == 15
    return keys


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    os.environ["CGI2REAL_S3_TIMEOUT"] = TIMEOUT  # before the proxy's filesystem is made (and cached)
    with FaultProxy(s3_endpoint, stall_seconds=3 * float(TIMEOUT)) as p:
        yield p
    os.environ.pop("CGI2REAL_S3_TIMEOUT")


def rows_by_path(out) -> dict:
    return {r["path"]: r for r in pq.read_table(out).to_pylist()}


def assert_same_rows(table: dict, reference: dict):
    assert set(table) == set(reference)
    for path, row in reference.items():
        assert (table[path]["label"], table[path]["error"]) == (row["label"], row["error"]), path
        if row["error"] is None:
            np.testing.assert_allclose(table[path]["confidence"], row["confidence"], atol=5e-4)  # other batch-mates: float32 noise (~1e-4)


# --- Transient faults --------------------------------------------------------------------------


def test_transient_failures_are_told_from_final_ones():
    assert is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body."))
    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when receiving data"))
    assert is_transient(TimeoutError("read timed out")) and is_transient(ConnectionResetError())
    assert not is_transient(FileNotFoundError("Path does not exist 'b/k.jpg'"))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"))


@pytest.mark.slow
def test_a_read_retries_transient_faults_and_gives_up_as_unavailable(proxy, photos):
    fs = s3_filesystem(proxy.endpoint)
    key = "scale-photos/" + photos[0]
    proxy.add(key, "slowdown", times=4)  # more than the S3 client's own 3 tries: our retry is needed
    data, error = read_file(fs, key)
    assert error is None and data[:2] == b"\xff\xd8" and proxy.hits[key] == 4
    proxy.add(key, "reset")  # for good
    data, error = read_file(fs, key)
    assert data is None and error.startswith("unavailable: ") and "Connection reset" in error
    assert proxy.hits[key] >= 4 + READ_ATTEMPTS
    proxy.clear()


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
def test_an_s3_tree_is_listed_in_parallel_through_list_faults(proxy, s3_client):
    """Location.walk: the top level, then each of its folders whole, LIST_THREADS at once; a list
    request answered `503 SlowDown` past the S3 client's own 3 tries is retried."""
    s3_client.create_bucket(Bucket="scale-tree")
    keys = {"tree/top.jpg"} | {f"tree/f{i:02d}/{name}" for i in range(40) for name in ("a.jpg", "b.txt", "deep/c.jpg")}
    for key in keys:
        s3_client.put_object(Bucket="scale-tree", Key=key, Body=b"x")
    flaky = "LIST scale-tree/tree/f07/"
    proxy.add(flaky, "slowdown", times=4)
    listed = [i.path for i in locate("s3://scale-tree/tree", proxy.endpoint).list_files()]
    assert listed == sorted(f"scale-tree/{k}" for k in keys)
    assert proxy.hits[flaky] == 4, dict(proxy.hits)
    source = list_images("s3://scale-tree/tree", proxy.endpoint)
    assert source.rows.num_rows == 81 and source.skipped == 40  # the .txt files
    proxy.add(flaky, "slowdown")  # for good
    with pytest.raises(InputError, match=r"^cannot list s3://scale-tree/tree: .*SLOW_DOWN"):
        list_images("s3://scale-tree/tree", proxy.endpoint)
    proxy.clear()


@pytest.mark.slow
def test_labeling_starts_while_a_slow_listing_goes_on(ray_cluster, proxy, s3_client, photos, package, tmp_path, monkeypatch):
    """A listing still running after LISTING_HEAD_START: what it has found is labeled in a first
    wave, the rest in later ones; the table ends up exactly as one wave would leave it."""
    s3_client.create_bucket(Bucket="scale-waves")
    images = [k for k in photos if k.endswith(".jpg") and "/zoo/" not in k]
    for i, key in enumerate(images):  # one image per folder
        body = s3_client.get_object(Bucket="scale-photos", Key=key)["Body"].read()
        s3_client.put_object(Bucket="scale-waves", Key=f"tree/f{i:02d}/{os.path.basename(key)}", Body=body)
    monkeypatch.setattr("cgi2real.storage.LIST_THREADS", 2)  # the top level, then its 12 folders two at a time
    monkeypatch.setattr("cgi2real.label.LISTING_HEAD_START", 0.5)
    proxy.latency = 0.5  # per request: the listing takes about 4 s
    try:
        output = invoke("label", "s3://scale-waves/tree", "--model", package, "--out", tmp_path / "waves", "--s3-endpoint", proxy.endpoint).stdout
    finally:
        proxy.latency = 0.0
    assert "labeling those while the listing goes on" in output and "images listed so far; labeling the next" in output, output
    assert f"{len(images)} images under s3://scale-waves/tree" in output
    paths = pq.read_table(tmp_path / "waves").column("path").to_pylist()
    assert sorted(paths) == sorted(f"s3://scale-waves/tree/f{i:02d}/{os.path.basename(k)}" for i, k in enumerate(images))


def _paths(source) -> set[str]:
    return set(source.rows.column("path").to_pylist())


def test_path_manifests_in_parquet_and_csv_local_and_s3(tmp_path, s3_client, s3_endpoint, photos):
    uris = [f"s3://scale-photos/{k}" for k in photos] + ["s3://scale-photos/photos/gone.jpg", "s3://scale-photos/notes.txt"]
    uris = uris[::-1] + uris[:2]  # any order; two listed twice
    pq.write_table(pa.table({"path": uris, "size": [1] * len(uris)}), tmp_path / "m.parquet")
    csv_text = "path\n" + "\n".join(uris) + "\n"
    (tmp_path / "m.csv").write_text(csv_text)
    s3_client.put_object(Bucket="scale-photos", Key="manifests/m.csv.gz", Body=gzip.compress(csv_text.encode()))
    want = {u[len("s3://"):] for u in uris if u.endswith(".jpg")}
    for where in (tmp_path / "m.parquet", tmp_path / "m.csv", "s3://scale-photos/manifests/m.csv.gz"):
        source = read_manifest(str(where), s3_endpoint)
        assert _paths(source) == want and (source.skipped, source.duplicates) == (1, 2), where
        assert source.root.scheme == "s3" and source.kind == "manifest"

    (tmp_path / "local.csv").write_text("path\n/data/a.jpg\n/data/b.PNG\n/data/c.json\n\n")
    local = read_manifest(str(tmp_path / "local.csv"))
    assert _paths(local) == {"/data/a.jpg", "/data/b.PNG"} and local.skipped == 1 and local.root.scheme == "file"
    assert set(local.rows.column("size").to_pylist()) == {-1}  # not known: checked when read


def test_bad_manifests_are_refused_with_the_reason(tmp_path):
    (tmp_path / "mixed.csv").write_text("path\ns3://b/a.jpg\n/data/b.jpg\n")
    (tmp_path / "relative.csv").write_text("path\nphotos/a.jpg\n")
    (tmp_path / "nopath.csv").write_text("file\n/a.jpg\n")
    (tmp_path / "none.csv").write_text("path\n/a.txt\n")
    (tmp_path / "m.txt").write_text("/a.jpg\n")
    for name, reason in [
        ("mixed.csv", "mixes s3:// URIs and local paths"), ("relative.csv", "relative path ('photos/a.jpg')"),
        ("nopath.csv", "has no path column"), ("none.csv", "lists no image files (1 other rows)"),
        ("m.txt", "expected a .parquet or .csv(.gz) file"), ("gone.csv", "does not exist"),
    ]:
        result = invoke("label", "--manifest", tmp_path / name, "--model", tmp_path, "--out", tmp_path / "out", code=2)
        assert reason in result.stderr, (name, result.stderr)
    assert "not both" in invoke("label", tmp_path, "--manifest", tmp_path / "m.csv", "--model", tmp_path, "--out", tmp_path / "o", code=2).stderr
    assert "give SOURCE" in invoke("label", "--model", tmp_path, "--out", tmp_path / "o", code=2).stderr


def _inventory(s3_client, fmt: str, rows: list[tuple[str, str, int]]) -> str:
    """An S3 Inventory report of `rows` (bucket, key, size) in bucket scale-photos; returns its manifest.json URI."""
    prefix = f"inventory/scale-photos/daily-{fmt.lower()}"
    if fmt == "CSV":  # no header, quoted, keys URL-encoded; a delete marker and an old version to skip
        from urllib.parse import quote_plus

        lines = [f'"{b}","{quote_plus(k)}","{s}","true","false"' for b, k, s in rows]
        lines += ['"scale-photos","photos%2Fdeleted.jpg","0","true","true"', '"scale-photos","photos%2Fold.jpg","9","false","false"']
        body, name = gzip.compress("\n".join(lines).encode()), "data/part-0.csv.gz"
        schema = "Bucket, Key, Size, IsLatest, IsDeleteMarker"
    else:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"bucket": [r[0] for r in rows], "key": [r[1] for r in rows], "size": [r[2] for r in rows]}), buffer)
        body, name = buffer.getvalue(), "data/part-0.parquet"
        schema = "message s3.inventory { required binary bucket (STRING); required binary key (STRING); optional int64 size; }"
    s3_client.put_object(Bucket="scale-photos", Key=f"{prefix}/{name}", Body=body)
    manifest = {
        "sourceBucket": "scale-photos", "destinationBucket": "arn:aws:s3:::scale-photos", "version": "2016-11-30",
        "fileFormat": fmt, "fileSchema": schema, "files": [{"key": f"{prefix}/{name}", "size": len(body), "MD5checksum": "x"}],
    }
    s3_client.put_object(Bucket="scale-photos", Key=f"{prefix}/2026-11-26T01-00Z/manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://scale-photos/{prefix}/2026-11-26T01-00Z/manifest.json"


def test_s3_inventory_reports_in_csv_and_parquet(s3_client, s3_endpoint, photos):
    rows = [("scale-photos", k, 100) for k in photos] + [("scale-photos", "photos/with space+plus.jpg", 5), ("scale-photos", "photos/readme.md", 5)]
    for fmt in ("CSV", "Parquet"):
        source = read_manifest(_inventory(s3_client, fmt, rows), s3_endpoint)
        assert _paths(source) == {f"{b}/{k}" for b, k, _ in rows if k.endswith(".jpg")}, fmt
        assert source.skipped == (3 if fmt == "CSV" else 1)  # the readme (+ the delete marker and the old version)
        assert set(source.rows.column("size").to_pylist()) == {100, 5}


@pytest.mark.slow
def test_label_an_inventory_manifest_with_missing_and_other_keys(ray_cluster, s3_client, s3_endpoint, photos, package, tmp_path):
    rows = [("scale-photos", k, 1) for k in photos[:6]] + [("scale-photos", "photos/never-uploaded.jpg", 1), ("scale-photos", "photos/x.txt", 1)]
    manifest = _inventory(s3_client, "CSV", rows)
    output = invoke("label", "--manifest", manifest, "--model", package, "--out", tmp_path / "out", "--s3-endpoint", s3_endpoint).stdout
    table = rows_by_path(tmp_path / "out")
    assert set(table) == {f"s3://scale-photos/{k}" for _, k, _ in rows[:7]}
    assert table["s3://scale-photos/photos/never-uploaded.jpg"]["error"] == "file not found"
    assert "images    7 in " in output and "(3 other files skipped)" in output  # x.txt, the delete marker, the old version


# --- The set difference ------------------------------------------------------------


def test_the_set_difference_keeps_exactly_the_unlabeled_rows(tmp_path):
    paths = [f"bucket/img/{i:07d}.jpg" for i in range(50_000)]
    rows = pa.table({"path": paths, "size": [1] * len(paths)})
    pq.write_table(pa.table({"path": [f"s3://{p}" for p in paths[::3]]}), tmp_path / "part-1.parquet")
    done = labeled_paths(locate("/").fs, [str(tmp_path / "part-1.parquet")])
    assert done.to_pylist() == sorted(done.to_pylist())
    todo = drop_labeled(rows, "s3", done).column("path").to_pylist()
    assert sorted(todo) == [p for i, p in enumerate(paths) if i % 3]


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
