"""The label table: its contract, whole-file commits, one writer under a lease, and what a full disk or a failing S3 leaves behind."""

import json
import os
import shutil
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

from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.label_table import TMP_PREFIX, TMP_SUFFIX, LabelTable, LeaseLost, TableLease, TableWriteFailed, TableWriter, to_table
from cgi2real.formats.package import read_model_package
from cgi2real.pipelines.labeler import Labeler
from cgi2real.storage.locations import Location, locate
from tests.labeling import batch_of, image_files

CLASSES = ["both", "horse", "human"]


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


def test_a_crash_mid_commit_leaves_nothing_a_parquet_glob_reads(tmp_path, package, source):
    import duckdb

    folder = tmp_path / "t"
    output = Labeler(*read_model_package(package))(batch_of(image_files(source[0])[:6]))
    rows = to_table(list(output["path"]), output["probs"], [None] * 6, output["labeled_at"], CLASSES, "m1")
    LabelTable(locate(str(folder))).commit(rows)
    crashing = LabelTable(Location(pafs.PyFileSystem(pafs.FSSpecHandler(_CrashBeforeRename())), str(folder), "file"))
    with pytest.raises(TableWriteFailed, match="killed before the rename"):  # a failed commit removes its temporary file
        crashing.commit(rows)
    (committed,) = os.listdir(folder)
    # a run killed at that moment leaves its temporary file behind (the next run's `prepare` clears it): readers skip it
    shutil.copy(folder / committed, folder / f"{TMP_PREFIX}{committed}{TMP_SUFFIX}")
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


class _CrashBeforeRename(LocalFileSystem):
    """A local file system on which the rename that commits a file never happens (a kill at that moment)."""

    def mv(self, *args, **kwargs):
        raise OSError("killed before the rename")


# --- The storage failing under a run ---------------------------------------------------------------


def can_mount() -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace (root, or CI)."""
    try:
        probe = "mount -t tmpfs -o size=16k tmpfs /mnt && umount /mnt"
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", probe], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs `unshare -m` and a tmpfs mount (root)")

FILL_THEN_COMMIT = r"""
import json, os, subprocess, sys
import numpy as np
from cgi2real.formats.label_table import LabelTable, TableLease, TableWriteFailed, to_table
from cgi2real.storage.locations import locate

folder = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], check=True)
table = LabelTable(locate(os.path.join(folder, "labels")))
lease = TableLease(table.folder, table.run_id)
lease.acquire()
table.lease, committed, rows, error = lease, 0, 0, None
probs = np.full((200, 3), 1 / 3, dtype=np.float32)
while error is None:
    paths = [f"/img/{committed}-{i}.jpg" for i in range(200)]
    try:
        table.commit(to_table(paths, probs, [None] * 200, np.zeros(200, "int64"), ["both", "horse", "human"], "m"))
        committed, rows = committed + 1, rows + 200
    except TableWriteFailed as e:
        error = str(e)
try:  # the disk is full: a lease renewal fails too, and leaves no temporary file
    lease._write()
    renewed = "renewed"
except OSError as e:
    renewed = str(e)
print(json.dumps({"error": error, "committed": committed, "rows": rows, "renewal": renewed, "files": sorted(os.listdir(table.folder.path)),
                  "readable": len(__import__("pyarrow.parquet").parquet.read_table(table.folder.path))}))
"""


@needs_mount
def test_a_full_disk_stops_commits_with_the_reason_and_leaves_no_temporary_file(tmp_path):
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", FILL_THEN_COMMIT, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout)
    assert seen["committed"] >= 1 and "No space left on device" in seen["error"] and "rerun the same command" in seen["error"]
    assert "No space left on device" in seen["renewal"]
    assert seen["files"] == ["_lease.json"] + [f for f in seen["files"] if f.startswith("part-")]  # no _tmp-*, no *.tmp
    assert len(seen["files"]) == 1 + seen["committed"] and seen["readable"] == seen["rows"]  # the committed files stay whole


@needs_mount
def test_label_on_a_full_disk_is_one_line_and_exit_1(tmp_path, package, source):
    """The table's first write (the lease) hits the full disk: one line, exit 1 (the storage, not the input), nothing left."""
    fill = f"mount -t tmpfs -o size=8k tmpfs {tmp_path} && head -c 8192 /dev/zero > {tmp_path}/filler; "
    label = f"{sys.executable} -m cgi2real.cli label {source[0]} --model {package} --out {tmp_path}/labels; echo exit=$?; ls -A {tmp_path}/labels"
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", fill + label], capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write the label table") and "No space left on device" in errors[0], result.stderr
    assert "exit=1" in result.stdout and result.stdout.strip().endswith("exit=1"), result.stdout  # and the folder holds nothing


@pytest.mark.slow
def test_transient_s3_errors_on_the_lease_are_retried_and_lasting_ones_exit_1(proxy, bucket, monkeypatch):
    monkeypatch.setattr("cgi2real.storage.locations.RETRY_SECONDS", 0.05)  # our backoff, shortened: the tries are what counts
    folder = locate(f"s3://{bucket}/labels", proxy.endpoint)
    key = f"{bucket}/labels/_lease.json"
    # A PUT failing 4 times outlasts the S3 client's own 3 tries; a streamed GET it does not retry at all.
    for request, times in ((f"PUT {key}", 4), (f"GET {key}", 3)):  # writing the lease, then reading it back
        proxy.add(request, "slowdown", times=times)
        with TableLease(folder, f"run-{times}"):
            assert proxy.hits[request] == times
    proxy.add(f"PUT {key}", "slowdown")  # for good
    with pytest.raises(RunFailed, match="SlowDown|503|SLOW_DOWN"):  # the storage's failure (exit 1), not bad input (exit 2)
        TableLease(folder, "run-2").acquire()
    proxy.clear()

