"""Batch labeling: the model actor and table writer alone, then whole runs on Ray (local and S3)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from cgi2real.data import read_image
from cgi2real.errors import InputError
from cgi2real.label import LabelTable, LeaseLost, TableLease, TableWriter, to_table
from cgi2real.labeler import Labeler
from cgi2real.model import read_model_package
from cgi2real.presets import EvalPreset
from cgi2real.storage import Location, locate, s3_filesystem
from tests.conftest import upload_folder
from tests.labeling import direct_probabilities, image_files, invoke, make_package, write_zoo

CLASSES = ["both", "horse", "human"]


@pytest.fixture(scope="module")
def package(image_root, tmp_path_factory):
    return make_package(str(tmp_path_factory.mktemp("pkg") / "pkg"), image_root(16, 96))


@pytest.fixture(scope="module")
def source(image_root, tmp_path_factory):
    """48 generated JPEGs in class folders plus the zoo; returns (folder, zoo reasons)."""
    folder = tmp_path_factory.mktemp("source") / "images"
    shutil.copytree(image_root(16, 96), folder)
    return str(folder), write_zoo(str(folder / "zoo"))


@pytest.fixture(scope="module")
def expected(package, source):
    """Direct single-image predictions of every input file, keyed by path."""
    return direct_probabilities(package, image_files(source[0]))


def batch_of(paths: list[str], size: int = 96) -> dict:
    """A decoded batch as the pipeline's CPU stage makes it."""
    from cgi2real.data import decode_for_labeling

    return decode_for_labeling({"path": np.array(paths, object), "size": np.array([os.path.getsize(p) for p in paths])}, EvalPreset(size), locate("/").fs)


# --- Without Ray -----------------------------------------------------------------------------------


def test_labeler_equals_single_image_predictions_and_passes_errors_through(package, source, expected):
    folder, zoo = source
    paths = image_files(folder)
    config, weights = read_model_package(package)
    output = Labeler(config, weights)(batch_of(paths))
    for path, probs, error in zip(output["path"], output["probs"], output["error"]):
        if expected[path] is None:
            assert error and np.isnan(probs).all()
        else:
            assert error == "" and probs.argmax() == expected[path].argmax()
            np.testing.assert_allclose(probs, expected[path], atol=5e-4)  # batched float32 sums differ from single-image ones by ~1e-4
    assert len({int(p.argmax()) for p in output["probs"] if not np.isnan(p).any()}) > 1, "the test package should disagree with itself"


def test_read_errors_name_the_reason(tmp_path):
    preset = EvalPreset(96)
    assert read_image(locate("/").fs, str(tmp_path / "gone.jpg"), preset) == (None, "file not found")
    assert read_image(locate("/").fs, str(tmp_path / "x.jpg"), preset, size=2**40)[1].startswith("too large: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_permission_denied(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    assert read_image(locate("/").fs, str(path), EvalPreset(96)) == (None, "permission denied")


def test_table_writer_commits_whole_files_and_never_duplicates_a_path(tmp_path, package, source):
    folder, _ = source
    paths = image_files(folder)[:10]
    config, weights = read_model_package(package)
    output = Labeler(config, weights)(batch_of(paths))
    table = LabelTable(locate(str(tmp_path / "t")))
    table.prepare(overwrite=False)
    writer = TableWriter(table, locate("/"), CLASSES, "m1", rows_per_file=4, seconds=3600)
    output["error"][:2] = ["unavailable: AWS Error SLOW_DOWN during GetObject operation", "unavailable: curlCode: 28, Timeout was reached"]
    assert writer.add(output) == 8  # the two that stayed unreadable through the retries get no row
    assert writer.unavailable == 2 and "SLOW_DOWN" in writer.unavailable_example
    assert writer.add(output) == 0  # a batch delivered twice (a retried task) adds nothing
    writer.flush()
    files = sorted(os.listdir(tmp_path / "t"))
    assert len(files) == 1 and files[0].startswith("part-")  # the batch reached 4 rows: committed, no temp file left
    written = pq.read_table(tmp_path / "t")
    assert sorted(written["path"].to_pylist()) == sorted(paths[2:])
    assert written["error"].null_count == 8


def test_table_refuses_foreign_files_and_clears_leftovers(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "_tmp-part-x.parquet").write_bytes(b"half a file")  # named as before 0.1.0's fix
    (folder / "_tmp-part-y.parquet.tmp").write_bytes(b"half a file")
    LabelTable(locate(str(folder))).check()
    LabelTable(locate(str(folder))).prepare(overwrite=False)
    assert os.listdir(folder) == []  # an interrupted run's temp files are gone
    (folder / "mine.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="not a label table"):
        LabelTable(locate(str(folder))).check()
    assert (folder / "mine.csv").exists()


class _CrashBeforeRename(LocalFileSystem):
    """A local file system on which the rename that commits a file never happens (a kill at that moment)."""

    def mv(self, *args, **kwargs):
        raise OSError("killed before the rename")


def test_a_crash_mid_commit_leaves_nothing_a_parquet_glob_reads(tmp_path, package, source):
    import duckdb

    folder = tmp_path / "t"
    output = Labeler(*read_model_package(package))(batch_of(image_files(source[0])[:6]))
    rows = to_table(list(output["path"]), output["probs"], [None] * 6, output["labeled_at"], CLASSES, "m1")
    LabelTable(locate(str(folder))).commit(rows)
    crashing = LabelTable(Location(pafs.PyFileSystem(pafs.FSSpecHandler(_CrashBeforeRename())), str(folder), "file"))
    with pytest.raises(OSError, match="killed"):
        crashing.commit(rows)
    assert len(os.listdir(folder)) == 2  # the committed file and the crash's leftover
    assert duckdb.sql(f"select count(*) from '{folder}/*.parquet'").fetchall() == [(6,)]
    assert pq.read_table(folder).num_rows == 6


def test_a_second_writer_is_refused_while_the_lease_is_renewed(tmp_path):
    folder = locate(str(tmp_path / "t"))
    with TableLease(folder, "run-a", heartbeat_seconds=0.05) as first:
        with pytest.raises(InputError, match=r"is being written by run run-a \(host .*, pid \d+\), lease renewed 0 s ago"):
            TableLease(folder, "run-b", force=True).acquire()  # --force does not break a live lease
        time.sleep(0.3)
        assert json.loads((tmp_path / "t" / "_lease.json").read_text())["heartbeat"] > time.time() - 0.25  # renewed
        first.check_held()
    assert not (tmp_path / "t" / "_lease.json").exists()  # released at the end of the run
    with TableLease(folder, "run-b"):
        pass


def test_a_stale_lease_needs_force_and_a_dead_local_process_none(tmp_path, capsys):
    folder = locate(str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    lease = tmp_path / "t" / "_lease.json"
    lease.write_text(json.dumps({"run": "run-a", "host": "another-host", "pid": 1, "heartbeat": time.time() - 600}))
    with pytest.raises(InputError, match="not renewed for 600 s: if that run is dead, pass --force"):
        TableLease(folder, "run-b").acquire()
    TableLease(folder, "run-b", force=True).acquire()
    assert json.loads(lease.read_text())["run"] == "run-b" and "breaking the table's lease held by run run-a" in capsys.readouterr().out
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lease.write_text(json.dumps({"run": "run-c", "host": socket.gethostname(), "pid": int(dead), "heartbeat": time.time()}))
    TableLease(folder, "run-d").acquire()  # fresh, but its process on this host is gone
    assert json.loads(lease.read_text())["run"] == "run-d"


def test_a_run_whose_lease_was_taken_over_stops_writing(tmp_path, package, source):
    folder = locate(str(tmp_path / "t"))
    output = Labeler(*read_model_package(package))(batch_of(image_files(source[0])[:2]))
    rows = to_table(list(output["path"]), output["probs"], [None] * 2, output["labeled_at"], CLASSES, "m1")
    table = LabelTable(folder)
    with TableLease(folder, table.run_id, heartbeat_seconds=0.05) as lease:
        table.lease = lease
        table.commit(rows)
        TableLease(folder, "run-b", force=True, stale_seconds=0).acquire()  # the user believed the first run dead
        deadline = time.monotonic() + 10
        while lease.taken_by is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match="run run-b took over"):
            table.commit(rows)
    assert json.loads((tmp_path / "t" / "_lease.json").read_text())["run"] == "run-b"  # not deleted by the loser
    assert pq.read_table(str(tmp_path / "t")).num_rows == 2


def test_to_table_follows_the_contract():
    probs = np.array([[0.2, 0.7, 0.1], [np.nan] * 3], dtype=np.float32)
    t = to_table(["a.jpg", "b.jpg"], probs, [None, "truncated"], np.array([0, 1_000_000]), CLASSES, "abc")
    assert t.column_names == ["path", "label", "confidence", "p_both", "p_horse", "p_human", "error", "model", "labeled_at"]
    assert t["label"].to_pylist() == ["horse", None] and t["error"].to_pylist() == [None, "truncated"]
    assert t["confidence"].to_pylist()[0] == pytest.approx(0.7) and t["confidence"].to_pylist()[1] is None
    assert t.schema.field("label").type == pa.dictionary(pa.int32(), pa.string())
    assert t.schema.field("p_horse").type == pa.float32()
    assert t.schema.field("labeled_at").type == pa.timestamp("us", tz="UTC")


def test_low_confidence_rows_keep_probabilities_but_no_label():
    probs = np.array([[0.2, 0.7, 0.1], [0.4, 0.35, 0.25], [np.nan] * 3], dtype=np.float32)
    t = to_table(["a.jpg", "b.jpg", "c.jpg"], probs, [None, None, "truncated"], np.zeros(3, np.int64), CLASSES, "abc", abstain_below=0.5)
    assert t["label"].to_pylist() == ["horse", None, None]
    assert t["error"].to_pylist() == [None, "low confidence", "truncated"]
    assert t["confidence"].to_pylist()[1] == pytest.approx(0.4) and t["p_human"].to_pylist()[1] == pytest.approx(0.25)
    assert t["confidence"].to_pylist()[2] is None
    assert b'"abstain_below": 0.5' in t.schema.metadata[b"cgi2real"]


# --- On Ray ----------------------------------------------------------------------------------------


def assert_table_matches(table: pa.Table, expected: dict, uri_of, zoo: dict):
    """One row per input; error rows exactly for the broken files; labels equal direct predictions."""
    rows = {row["path"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows == len(expected)
    assert set(rows) == {uri_of(p) for p in expected}
    for path, probs in expected.items():
        row = rows[uri_of(path)]
        reason = zoo.get(os.path.basename(path))
        if reason is None and probs is not None:
            assert row["error"] is None and row["label"] == CLASSES[int(probs.argmax())], path
            np.testing.assert_allclose([row[f"p_{c}"] for c in CLASSES], probs, atol=5e-4)  # float32: batch-mates change the sums
            assert row["confidence"] == pytest.approx(float(probs.max()), abs=5e-4)
        else:
            assert reason is not None, f"{path} should have been labeled"
            assert row["label"] is None and row["p_horse"] is None and reason in row["error"], (path, row["error"])
    name_of = {os.path.basename(p): uri_of(p) for p in expected}
    assert rows[name_of["exif_rotated.png"]]["p_both"] == pytest.approx(rows[name_of["upright.png"]]["p_both"], abs=1e-5)


@pytest.mark.slow
def test_label_a_local_folder_then_rerun_adds_nothing(ray_cluster, package, source, expected, tmp_path):
    import duckdb
    import pandas as pd

    folder, zoo = source
    out = tmp_path / "labels"
    output = invoke("label", folder, "--model", package, "--out", out, "--batch-size", 8).output
    table = pq.read_table(out)
    assert_table_matches(table, expected, lambda p: p, zoo)
    broken = sum(1 for r in zoo.values() if r)
    assert f"errors    {broken} (" in output and "49 other files skipped" in output  # 48 figure masks, 1 text file
    assert f"table     {out}" in output

    meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata[b"cgi2real"].decode()
    config, _ = read_model_package(package)
    assert config["weights_sha256"][:16] in meta and '"classes": ["both", "horse", "human"]' in meta
    assert set(table["model"].to_pylist()) == {config["weights_sha256"][:16]}
    assert len(pd.read_parquet(out)) == len(expected)
    n, distinct, errors = duckdb.sql(f"select count(*), count(distinct path), count(error) from read_parquet('{out}/*.parquet')").fetchall()[0]
    assert (n, distinct, errors) == (len(expected), len(expected), broken)

    files_before = sorted(os.listdir(out))
    again = invoke("label", folder, "--model", package, "--out", out).output
    assert f"{len(expected)} already in" in again and sorted(os.listdir(out)) == files_before

    summary = invoke("summary", out).output
    assert f"{len(expected)} rows" in summary and "truncated 1" in summary and config["weights_sha256"][:16] in summary


@pytest.mark.slow
def test_decode_device_labels_what_the_device_preset_shows(ray_cluster, package, source, tmp_path):
    """--decode device through Ray: JPEG bytes to the model actor, decoded and framed there (CPU
    tensors here), other files decoded by the reading tasks; the zoo's error rows as ever."""
    folder, zoo = source
    expected = direct_probabilities(package, image_files(folder), decode="device")
    out = tmp_path / "labels"
    output = invoke("label", folder, "--model", package, "--out", out, "--decode", "device", "--batch-size", 16).output
    assert "decoding on the model device" in output
    assert_table_matches(pq.read_table(out), expected, lambda p: p, zoo)


def test_an_unknown_decode_mode_is_refused_before_anything_runs(package, source, tmp_path):
    result = invoke("label", source[0], "--model", package, "--out", tmp_path / "labels", "--decode", "gpu", code=2)
    assert "--decode 'gpu': expected one of cpu, device" in result.stderr and not (tmp_path / "labels").exists()


@pytest.mark.slow
def test_label_an_s3_prefix_with_an_s3_package(ray_cluster, package, source, expected, s3_client, bucket, s3_endpoint):
    folder, zoo = source
    upload_folder(s3_client, folder, bucket, "photos")
    upload_folder(s3_client, package, bucket, "models/m1")
    invoke("label", f"s3://{bucket}/photos", "--model", f"s3://{bucket}/models/m1", "--out", f"s3://{bucket}/labels", "--s3-endpoint", s3_endpoint, "--batch-size", 16)
    table = pq.read_table(f"{bucket}/labels", filesystem=s3_filesystem(s3_endpoint))
    assert_table_matches(table, expected, lambda p: f"s3://{bucket}/photos/{os.path.relpath(p, folder)}", zoo)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="labels/")["Contents"]]
    files = [k for k in keys if not k.endswith("/")]  # pyarrow keeps a folder marker
    assert files and all(k.startswith("labels/part-") for k in files)
    assert "truncated 1" in invoke("summary", f"s3://{bucket}/labels", "--s3-endpoint", s3_endpoint).output


@pytest.mark.slow
def test_abstain_below_leaves_low_confidence_images_unlabeled(ray_cluster, package, source, expected, tmp_path):
    folder, zoo = source
    confidences = sorted(float(p.max()) for name, p in expected.items() if p is not None and not zoo.get(os.path.basename(name)))
    # a threshold in the widest gap between two confidences in the middle third: `cut` images abstain
    cut = max(range(len(confidences) // 3, 2 * len(confidences) // 3), key=lambda i: confidences[i] - confidences[i - 1])
    threshold = round((confidences[cut - 1] + confidences[cut]) / 2, 6)
    out = tmp_path / "labels"
    invoke("label", folder, "--model", package, "--out", out, "--abstain-below", threshold)
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    low = [r for r in rows.values() if r["error"] == "low confidence"]
    assert len(low) == cut and all(r["label"] is None and r["confidence"] < threshold for r in low)
    labeled = [r for r in rows.values() if r["label"] is not None]
    assert len(labeled) == len(confidences) - len(low) and all(r["confidence"] >= threshold for r in labeled)
    assert len(rows) == len(expected)
    assert "low confidence " + str(len(low)) in invoke("summary", out).output
    refused = invoke("label", folder, "--model", package, "--out", out, "--abstain-below", 0.9, code=2)
    assert f"--abstain-below {threshold}" in refused.stderr
    assert "--abstain-below is a probability" in invoke("label", folder, "--model", package, "--out", tmp_path / "x", "--abstain-below", 1.5, code=2).stderr


@pytest.mark.slow
def test_another_model_is_refused_and_overwrite_relabels(ray_cluster, package, image_root, tmp_path):
    images, out = image_root(4, 96), tmp_path / "labels"
    other = make_package(str(tmp_path / "other"), images, seed=1)
    invoke("label", images, "--model", package, "--out", out)
    refused = invoke("label", images, "--model", other, "--out", out, code=2)
    assert "holds labels from model" in refused.stderr and "--overwrite" in refused.stderr
    invoke("label", images, "--model", other, "--out", out, "--overwrite")
    table = pq.read_table(out)
    other_id = read_model_package(other)[0]["weights_sha256"][:16]
    assert table.num_rows == 12 and set(table["model"].to_pylist()) == {other_id}


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_repeating_a_row(ray_cluster, package, source, expected, tmp_path):
    """Kill a real labeling process after its first committed file; the rerun (in this process, on
    the module's Ray instance: a second start-up proves nothing more) completes the table."""
    folder, zoo = source
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "cgi2real.cli", "label", folder, "--model", package, "--out", str(out), "--batch-size", "4", "--rows-per-file", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no file committed within 120 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its local Ray, mid-run
    first.communicate()
    partial = pq.read_table(out).num_rows
    assert 0 < partial < len(expected), "the first run finished before it was killed"

    second = invoke(*command[3:])
    assert f"{partial} already in" in second.stdout
    assert_table_matches(pq.read_table(out), expected, lambda p: p, zoo)
