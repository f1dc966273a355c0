"""What a label run labels: S3 trees listed in parallel through list faults, manifests in every form, and the set difference against a table."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cgi2real.core.errors import InputError
from cgi2real.storage.listing import drop_labeled, labeled_paths, list_images, read_manifest
from cgi2real.storage.locations import locate
from tests.conftest import invoke


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


def test_s3_inventory_reports_in_csv_and_parquet(s3_client, s3_endpoint, photos):
    rows = [("scale-photos", k, 100) for k in photos] + [("scale-photos", "photos/with space+plus.jpg", 5), ("scale-photos", "photos/readme.md", 5)]
    for fmt in ("CSV", "Parquet"):
        source = read_manifest(write_inventory(s3_client, fmt, rows), s3_endpoint)
        assert _paths(source) == {f"{b}/{k}" for b, k, _ in rows if k.endswith(".jpg")}, fmt
        assert source.skipped == (3 if fmt == "CSV" else 1)  # the readme (+ the delete marker and the old version)
        assert set(source.rows.column("size").to_pylist()) == {100, 5}


def test_the_set_difference_keeps_exactly_the_unlabeled_rows(tmp_path):
    paths = [f"bucket/img/{i:07d}.jpg" for i in range(50_000)]
    rows = pa.table({"path": paths, "size": [1] * len(paths)})
    pq.write_table(pa.table({"path": [f"s3://{p}" for p in paths[::3]]}), tmp_path / "part-1.parquet")
    done = labeled_paths(locate("/").fs, [str(tmp_path / "part-1.parquet")])
    assert done.to_pylist() == sorted(done.to_pylist())
    todo = drop_labeled(rows, "s3", done).column("path").to_pylist()
    assert sorted(todo) == [p for i, p in enumerate(paths) if i % 3]


def _paths(source) -> set[str]:
    return set(source.rows.column("path").to_pylist())


def write_inventory(s3_client, fmt: str, rows: list[tuple[str, str, int]]) -> str:
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
