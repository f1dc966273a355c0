"""The label table: its schema, its folder of committed Parquet parts, the lease of its one writer, the writer, and reading it back.

A label table is a folder (local or s3://) of `part-*.parquet` files (see `table_schema`). Rerunning
into the same folder labels only paths that are not in it yet. One run at a time writes a table:
it holds the table's lease (`TableLease`) while it runs. Torch-free: the labeling driver and
`review` use it.
"""

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import cgi2real
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.class_folders import LabeledImages
from cgi2real.storage.locations import Location, first_line, is_unavailable, locate, write_failure

METADATA_KEY = b"cgi2real"  # Parquet key-value metadata: JSON with classes, model id, version


PART_PREFIX = "part-"


# Uncommitted files: `_tmp-part-....parquet.tmp`. pyarrow, pandas and Spark skip names starting
# with "_", and the suffix keeps them out of a `*.parquet` glob (DuckDB's, for one).
TMP_PREFIX, TMP_SUFFIX = "_tmp-", ".tmp"


LEASE_NAME = "_lease.json"  # the table's lock object (TableLease)


LEASE_HEARTBEAT_SECONDS = 15.0  # the holder renews the lease this often


LEASE_STALE_SECONDS = 120.0  # a lease not renewed for this long belongs to a dead run: --force breaks it


# Rows per Parquet row group: `review` reads the groups that hold the rows it shows, not whole files.
ROW_GROUP_ROWS = 16_384


LOW_CONFIDENCE = "low confidence"  # the error of a row left unlabeled by --abstain-below


def table_schema(classes: list[str], model_id: str, abstain_below: float | None = None) -> pa.Schema:
    """The label table's columns; the file metadata repeats the classes, the model id and the abstain threshold."""
    meta = {"classes": list(classes), "model": model_id, "abstain_below": abstain_below, "cgi2real_version": cgi2real.__version__}
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("label", pa.dictionary(pa.int32(), pa.string())),  # null on error (and on low confidence)
            pa.field("confidence", pa.float32()),  # the top class's probability; null when unreadable
            *(pa.field(f"p_{name}", pa.float32()) for name in classes),
            pa.field("error", pa.string()),  # null when the image was labeled
            pa.field("model", pa.string(), nullable=False),
            pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(meta).encode()},
    )


def to_table(
    paths, probs: np.ndarray, errors, labeled_at: np.ndarray, classes: list[str], model_id: str, abstain_below: float | None = None
) -> pa.Table:
    """Label-table rows from a Labeler's output; `paths` are URIs, `errors` None or a reason.

    With `abstain_below`, a readable image whose top probability is below it gets no label and
    the error "low confidence"; its confidence and probabilities stay, for triage.
    """
    unreadable = np.array([e is not None for e in errors], dtype=bool)
    confidence = np.nan_to_num(probs).max(axis=1, initial=0.0).astype(np.float32)
    low = ~unreadable & (confidence < abstain_below) if abstain_below is not None else np.zeros_like(unreadable)
    errors = [LOW_CONFIDENCE if is_low else e for e, is_low in zip(errors, low)]
    unlabeled = unreadable | low
    index = np.where(unlabeled, 0, np.nan_to_num(probs).argmax(axis=1)).astype(np.int32)
    label = pa.DictionaryArray.from_arrays(pa.array(index, mask=unlabeled), pa.array(classes, pa.string()))
    columns = [
        pa.array(paths, pa.string()),
        label,
        pa.array(confidence, mask=unreadable),
        *(pa.array(probs[:, i], mask=unreadable) for i in range(len(classes))),
        pa.array(errors, pa.string()),
        pa.array([model_id] * len(paths), pa.string()),
        pa.array(labeled_at, pa.timestamp("us", tz="UTC")),
    ]
    return pa.Table.from_arrays(columns, schema=table_schema(classes, model_id, abstain_below))


class LabelTable:
    """A label table in a folder, local or s3://: committed `part-*.parquet` files.

    A file is written under a `_tmp-` name and renamed when complete (locally), or uploaded in one
    request (S3, where an object appears whole or not at all), so readers never see half a file.
    Only the holder of the table's lease may change it: `check`, then `TableLease`, then `prepare`.
    """

    def __init__(self, folder: Location):
        self.folder = folder
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.written = 0  # files committed by this writer
        self.lease: "TableLease | None" = None  # when set, every commit first checks it is still held

    def listing(self) -> list[pafs.FileInfo]:
        return self.folder.list_files() if self.folder.is_dir() else []

    def part_files(self) -> list[str]:
        return [i.path for i in self.listing() if i.base_name.startswith(PART_PREFIX) and i.base_name.endswith(".parquet")]

    def check(self) -> None:
        """Refuse an --out that is a file or holds files that are not a label table's."""
        info = self.folder.info()
        if info.type == pafs.FileType.File:
            raise InputError(f"--out {self.folder.uri} is a file; give a folder for the label table")
        ours = (PART_PREFIX, TMP_PREFIX, LEASE_NAME, ".cgi2real-")  # ".cgi2real-": runtime.check_local_paths' markers
        foreign = [i.path for i in self.listing() if not i.base_name.startswith(ours)]
        if foreign:
            raise InputError(
                f"--out {self.folder.uri} holds files that are not a label table's (e.g. {self.folder.uri_of(foreign[0])}); "
                "give a new or empty folder"
            )

    def prepare(self, overwrite: bool) -> None:
        """Clear an interrupted run's temporary files (all files if `overwrite`) and check the folder is writable.

        Call it holding the lease: another writer's temporary files would be deleted otherwise.
        """
        try:
            for i in self.listing():
                if i.base_name == LEASE_NAME:
                    continue
                if overwrite or i.base_name.startswith(TMP_PREFIX):  # leftovers of an interrupted run
                    self.folder.fs.delete_file(i.path)
            probe = self.folder.child(f"{TMP_PREFIX}probe-{self.run_id}")
            probe.write_bytes(b"")
            self.folder.fs.delete_file(probe.path)
        except OSError as e:
            raise write_failure(e, f"cannot write the label table to {self.folder.uri}") from None

    def metadata(self, parts: list[str]) -> dict | None:
        """The cgi2real metadata of the newest of `parts` (None for a new table)."""
        if not parts:
            return None
        schema = pq.read_schema(parts[-1], filesystem=self.folder.fs)
        return json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))

    def read(self, parts: list[str], columns: list[str]) -> pa.Table:
        """`columns` of the committed files `parts` (from one `part_files()` listing)."""
        return pq.read_table(parts, columns=columns, filesystem=self.folder.fs)

    def commit(self, table: pa.Table) -> str:
        """Write `table` as the next part file, all or nothing; return its URI.

        A write that fails (a full disk, a permission lost, S3 failing through every retry) leaves
        no temporary file and raises RunFailed: the files committed before stay, and rerunning the
        same command resumes after them.
        """
        if self.lease is not None:
            self.lease.check_held()
        name = f"{PART_PREFIX}{self.run_id}-{self.written + 1:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        final = self.folder.child(name)
        tmp = self.folder.child(TMP_PREFIX + name + TMP_SUFFIX)
        try:
            if self.folder.scheme == "s3":
                final.write_bytes(sink.getvalue().to_pybytes())
            else:
                tmp.write_bytes(sink.getvalue().to_pybytes())
                self.folder.fs.move(tmp.path, final.path)  # a rename: atomic on one filesystem
        except OSError as e:
            if self.folder.scheme == "file":
                with contextlib.suppress(OSError):
                    os.remove(tmp.path)
            raise TableWriteFailed(
                f"cannot write to the label table {self.folder.uri}: {first_line(e)} ({self.written} file(s) committed by this run are kept; "
                "rerun the same command to resume once the storage works again)"
            ) from None
        self.written += 1
        return final.uri


class TableWriteFailed(RunFailed):
    """A part file could not be written: the run stops, keeping the files it committed."""


class LeaseLost(RunFailed):
    """Another run took this table's lease (with --force): this run must not write any more."""


class TableLease:
    """One writer per label table: the lock object `_lease.json` (run id, host, pid, heartbeat).

    Taken before the table is touched, renewed every LEASE_HEARTBEAT_SECONDS by a thread, and
    deleted when the run ends. A second run is refused while the lease is renewed. A lease not
    renewed for LEASE_STALE_SECONDS belongs to a run that died: `force` breaks it. A lease of a
    process on this host that no longer exists is broken without asking.
    """

    def __init__(
        self, folder: Location, run_id: str, force: bool = False,
        stale_seconds: float = LEASE_STALE_SECONDS, heartbeat_seconds: float = LEASE_HEARTBEAT_SECONDS,
    ):
        self.location, self.run_id, self.force = folder.child(LEASE_NAME), run_id, force
        self.stale_seconds, self.heartbeat_seconds = stale_seconds, heartbeat_seconds
        self.table_uri = folder.uri
        self.taken_by: str | None = None  # the run that broke this lease, once the heartbeat sees it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TableLease":
        self.acquire()
        self._thread = threading.Thread(target=self._renew, name="cgi2real-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with contextlib.suppress(OSError):
            if self.taken_by is None and (self.read() or {}).get("run") == self.run_id:
                self.location.fs.delete_file(self.location.path)

    def acquire(self) -> None:
        """Take the lease, or raise InputError saying who holds it and what to do."""
        holder = self.read()
        if holder is not None:
            self._refuse_or_break(holder)
        try:
            if self.location.scheme == "file":
                self._create_exclusively()
            else:
                # S3 has no exclusive create here: write, let a racing writer's request land, read back.
                self._write()
                time.sleep(1.0)
                if (self.read() or {}).get("run") != self.run_id:
                    raise InputError(f"--out {self.location.uri}: another run took the table's lease at the same moment; try again")
        except OSError as e:
            raise write_failure(e, f"cannot write the label table to {self.table_uri}") from None

    def _refuse_or_break(self, holder: dict) -> None:
        age = time.time() - float(holder.get("heartbeat", 0))
        who = f"run {holder.get('run')} (host {holder.get('host')}, pid {holder.get('pid')})"
        dead_here = holder.get("host") == socket.gethostname() and not _process_exists(int(holder.get("pid", 0)))
        if not dead_here:
            if age < self.stale_seconds:
                raise InputError(
                    f"--out {self.table_uri} is being written by {who}, lease renewed {age:.0f} s ago: "
                    "wait for it to finish, or label into another --out"
                )
            if not self.force:
                raise InputError(
                    f"--out {self.table_uri} has the lease of {who}, not renewed for {age:.0f} s: "
                    "if that run is dead, pass --force to take the table over"
                )
        print(f"breaking the table's lease held by {who}: " + ("its process is gone" if dead_here else f"not renewed for {age:.0f} s"), flush=True)
        with contextlib.suppress(FileNotFoundError):
            self.location.fs.delete_file(self.location.path)

    def _record(self) -> bytes:
        return json.dumps({"run": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}).encode()

    def _create_exclusively(self) -> None:
        os.makedirs(os.path.dirname(self.location.path), exist_ok=True)
        try:
            fd = os.open(self.location.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise InputError(f"--out {self.location.uri}: another run took the table's lease at the same moment; try again") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
        except OSError:  # a full disk: no empty lease left behind to block the next run
            with contextlib.suppress(OSError):
                os.remove(self.location.path)
            raise

    def _write(self) -> None:
        if self.location.scheme == "file":  # renewals replace the file whole: a reader never sees half of it
            tmp = f"{self.location.path}.{self.run_id}{TMP_SUFFIX}"
            try:
                with open(tmp, "wb") as f:
                    f.write(self._record())
                os.replace(tmp, self.location.path)
            except OSError:  # a full disk, say: no half-written renewal left behind; the next beat tries again
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        else:
            self.location.write_bytes(self._record())

    def read(self) -> dict | None:
        """The lease's record, or None when the table has no lease."""
        try:
            return json.loads(self.location.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:  # a half-written lease of a crashed writer: it holds nothing
            return {"heartbeat": 0}
        except OSError as e:  # the lease is the first thing a run writes: this is where an unwritable --out shows
            raise write_failure(e, f"cannot write the label table to {self.table_uri}") from None

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                holder = self.read()
                if (holder or {}).get("run") != self.run_id:
                    self.taken_by = (holder or {}).get("run", "unknown")
                    return
                self._write()
            except (OSError, InputError):  # a transient storage error: the next beat tries again
                continue

    def check_held(self) -> None:
        """Raise LeaseLost once another run has taken the lease."""
        if self.taken_by is not None:
            raise LeaseLost(f"run {self.taken_by} took over the label table {self.table_uri} (--force); this run stopped writing")


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def error_kind(error: str) -> str:
    """An error reason without its details ("too large: 9000x9000 pixels" -> "too large"), for counting."""
    return error.split(":", 1)[0]


class TableWriter:
    """Buffers Labeler output; commits a part file once `rows_per_file` rows or `seconds` have gathered.

    Keeps exactly one row per path: the pipeline gives each path once, and a path this run
    already wrote (a retried Ray task can deliver a batch twice) is dropped. Rows of files that
    were unavailable (`data.is_unavailable`) are counted, not written.
    """

    def __init__(
        self, table: LabelTable, root: Location, classes: list[str], model_id: str, rows_per_file: int, seconds: float,
        abstain_below: float | None = None,
    ):
        self.table, self.root, self.classes, self.model_id, self.abstain_below = table, root, classes, model_id, abstain_below
        self.seen: set[str] = set()  # this run's paths only, never the table's
        self.rows_per_file, self.seconds = rows_per_file, seconds
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.last_commit = time.monotonic()
        self.rows = 0
        self.errors: Counter[str] = Counter()
        self.unavailable = 0  # files that failed transiently through every retry: no row
        self.unavailable_example = ""

    def add(self, batch: dict[str, np.ndarray]) -> int:
        """Take one output batch; return how many new rows it brought."""
        uris = [self.root.uri_of(p) for p in batch["path"]]
        unavailable = np.array([is_unavailable(e) for e in batch["error"]], dtype=bool)
        if unavailable.any():
            self.unavailable += int(unavailable.sum())
            self.unavailable_example = self.unavailable_example or f"{uris[int(np.argmax(unavailable))]}: {batch['error'][unavailable][0]}"
        keep = np.array([u not in self.seen for u in uris], dtype=bool) & ~unavailable
        uris = [u for u, k in zip(uris, keep) if k]
        if not uris:
            return 0
        self.seen.update(uris)
        errors = [e or None for e in batch["error"][keep]]
        rows = to_table(uris, batch["probs"][keep], errors, batch["labeled_at"][keep], self.classes, self.model_id, self.abstain_below)
        self.errors.update(error_kind(e) for e in rows.column("error").to_pylist() if e)
        self.pending.append(rows)
        self.pending_rows += len(uris)
        self.rows += len(uris)
        if self.pending_rows >= self.rows_per_file or time.monotonic() - self.last_commit >= self.seconds:
            self.flush()
        return len(uris)

    def flush(self) -> None:
        if self.pending:
            self.table.commit(pa.concat_tables(self.pending))
        self.pending, self.pending_rows, self.last_commit = [], 0, time.monotonic()


def check_same_model(table: LabelTable, parts: list[str], classes: list[str], model_id: str, abstain_below: float | None = None) -> None:
    """Refuse to add rows from another model (or other classes, or another abstain threshold) to an existing table."""
    previous = table.metadata(parts)
    if previous and (previous.get("classes") != list(classes) or previous.get("model") != model_id):
        raise InputError(
            f"--out {table.folder.uri} holds labels from model {previous.get('model')} (classes {', '.join(previous.get('classes', []))}); "
            f"this is model {model_id}: pass --overwrite to relabel, or give another --out"
        )
    if previous and previous.get("abstain_below") != abstain_below:
        raise InputError(
            f"--out {table.folder.uri} was labeled with --abstain-below {previous.get('abstain_below')}, not {abstain_below}: "
            "rerun with the same threshold, pass --overwrite to relabel, or give another --out"
        )


def open_table(uri: str, s3_endpoint: str | None, what: str) -> tuple[LabelTable, list[str]]:
    """The label table at `uri` and its part files; refused when the folder is missing or holds none
    (`what` names the table in the message: "TABLE", "--pseudo-labels")."""
    table = LabelTable(locate(uri, s3_endpoint))
    if not table.folder.is_dir():
        raise InputError(f"{what} {table.folder.uri} does not exist or is not a folder")
    parts = table.part_files()
    if not parts:
        raise InputError(f"{what} {table.folder.uri} is not a label table (no {PART_PREFIX}*.parquet files)")
    try:
        ours = bool(table.metadata(parts))
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read the label table at {table.folder.uri}: {first_line(e)}") from None
    if not ours:
        raise InputError(f"{what} {table.folder.uri} is not a label table: its Parquet files were not written by cgi2real label")
    return table, parts


def pseudo_labeled_images(uri: str, classes: tuple[str, ...], min_confidence: float, s3_endpoint: str | None = None) -> LabeledImages:
    """The confidently labeled rows of a label table as a labeled dataset: self-training's extra root.

    Rows with a label and a confidence of at least `min_confidence` are kept; the images are read
    where the table says they are. A table of other classes than `classes` is refused.
    """
    table, parts = open_table(uri, s3_endpoint, "--pseudo-labels")
    meta = table.metadata(parts) or {}
    if meta.get("classes") != list(classes):
        raise InputError(
            f"--pseudo-labels {table.folder.uri} has classes {', '.join(meta.get('classes') or ['?'])}; "
            f"training is on {', '.join(classes)}"
        )
    try:
        rows = table.read(parts, ["path", "label", "confidence"])
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read the label table at {table.folder.uri}: {first_line(e)}") from None
    rows = rows.filter(pc.and_(pc.is_valid(rows["label"]), pc.greater_equal(rows["confidence"], min_confidence)))
    if not rows.num_rows:
        raise InputError(f"--pseudo-labels {table.folder.uri} has no labeled row with a confidence of at least {min_confidence:g} (--min-confidence)")
    uris = rows["path"].to_pylist()
    root = locate(_common_folder(uris, table.folder.uri), s3_endpoint)
    paths = [locate(u, s3_endpoint).path for u in uris]
    labels = [classes.index(name) for name in rows["label"].cast(pa.string()).to_pylist()]

    return LabeledImages(root, tuple(classes), tuple(paths), tuple(labels))


def _common_folder(uris: list[str], where: str) -> str:
    """The deepest folder (or s3:// prefix) holding every one of `uris`, all local or all S3."""
    s3 = [u.startswith("s3://") for u in uris]
    if any(s3) and not all(s3):
        raise InputError(f"--pseudo-labels {where} mixes local and s3:// images; label one source per table")
    if all(s3):
        return "s3://" + os.path.commonpath([os.path.dirname(u[len("s3://"):]) for u in uris])
    return os.path.commonpath([os.path.dirname(u) for u in uris])
