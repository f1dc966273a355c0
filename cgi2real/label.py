"""Batch labeling: stream image files through a model package into a Parquet label table.

The pipeline is Ray Data: listing tasks (or a manifest) give the files not labeled yet
(`sources`); CPU tasks read, decode and apply the eval preset (`data.decode_for_labeling`); a pool
of `Labeler` actors turns uint8 batches into probabilities. The driver writes the table itself:
the rows are tiny next to the images, and one writer can keep exactly one row per path, commit
each Parquet file whole, and report progress.

A file that fails to read for a transient reason (throttling, 5xx, a reset, a timeout) through
every retry gets no row: the run says how many and exits non-zero, and a rerun tries exactly those.

A label table is a folder of `part-*.parquet` files (see `table_schema`). Rerunning into the same
folder labels only paths that are not in it yet. One run at a time writes a table: it holds the
table's lease (`TableLease`) while it runs.
"""

import contextlib
import functools
import json
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import cgi2real
from cgi2real.config import DECODES, LabelConfig
from cgi2real.errors import InputError, RunFailed
from cgi2real.package import PackageInfo, read_package_info
from cgi2real.progress import Progress
from cgi2real.runtime import check_local_paths, node_cpus, start_ray
from cgi2real.sources import Source, drop_labeled, file_blocks, labeled_paths, open_source
from cgi2real.storage import Location, first_line, is_unavailable, locate

if TYPE_CHECKING:
    from cgi2real.data import LabeledImages

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
LISTING_HEAD_START = 10.0  # seconds a folder is listed before labeling starts, if its listing has not ended by then
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 256, 32
# Model replicas sharing one GPU, by where JPEGs are decoded: while one replica frames pictures or
# waits for its batch, another computes (BENCHMARKS.md: on one H100, device decoding ran 2,124 img/s
# with 2 and 2,471 with 4; CPU decoding 2,434 with 1 and 2,972-3,316 with 2).
ACTORS_PER_GPU = {"device": 4, "cpu": 2}
# On CPU nodes, one model replica per core (up to this many per node, which then share the cores
# in threads): on 2 cores two one-thread replicas labeled 15 % faster than one two-thread replica,
# which loses time at every thread barrier whenever Ray's own processes take a core (BENCHMARKS.md).
CPU_ACTORS_PER_NODE = 8


# --- The Ray stages (torch is imported in the workers that run them, never in the driver) --------


def read_files(batch: dict[str, np.ndarray], *, fs: pafs.FileSystem, image_size: int, geometry: str, decode: str) -> dict[str, np.ndarray]:
    """The reading tasks: file rows {path, size} -> what the Labeler takes (`data.decode_for_labeling`,
    or `data.read_for_device` with decode="device")."""
    from cgi2real.data import decode_for_labeling, read_for_device

    read = read_for_device if decode == "device" else decode_for_labeling
    return read(batch, preset=_eval_preset(image_size, geometry), fs=fs)


@functools.cache
def _eval_preset(image_size: int, geometry: str):
    from cgi2real.presets import EvalPreset

    return EvalPreset(image_size, geometry)


class LabelerActor:
    """`labeler.Labeler` as Ray Data's actor class: the same constructor and call, imported in the actor."""

    def __init__(self, **kwargs):
        from cgi2real.labeler import Labeler

        self.labeler = Labeler(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.labeler(batch)


def checked_weights_ref(uri: str, s3_endpoint: str | None, config: dict):
    """An ObjectRef to the package's weights, read and checked by a task on this node (`labeler.checked_weights`);
    InputError if they are not the config's or do not fit its network."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On this node, as a local package is on this disk; no CPU reserved, as a head node may have none for tasks.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    error, weights = ray.remote(_checked_weights).options(num_returns=2, num_cpus=0, scheduling_strategy=here).remote(uri, s3_endpoint, config)
    if message := ray.get(error):
        raise InputError(message)
    return weights


def _checked_weights(uri: str, s3_endpoint: str | None, config: dict) -> tuple[str | None, bytes | None]:
    from cgi2real.labeler import checked_weights

    return checked_weights(uri, s3_endpoint, config)


def check_abstain_below(threshold: float | None) -> None:
    if threshold is not None and not 0 < threshold <= 1:
        raise InputError(f"--abstain-below is a probability in (0, 1], got {threshold}")


def check_decode(decode: str) -> None:
    if decode not in DECODES:
        raise InputError(f"--decode {decode!r}: expected one of {', '.join(DECODES)}")


# --- The label table ---------------------------------------------------------------------------


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
            raise InputError(f"cannot write the label table to {self.folder.uri}: {first_line(e)}") from None

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
        """Write `table` as the next part file, all or nothing; return its URI."""
        if self.lease is not None:
            self.lease.check_held()
        self.written += 1
        name = f"{PART_PREFIX}{self.run_id}-{self.written:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        final = self.folder.child(name)
        if self.folder.scheme == "s3":
            final.write_bytes(sink.getvalue().to_pybytes())
        else:
            tmp = self.folder.child(TMP_PREFIX + name + TMP_SUFFIX)
            tmp.write_bytes(sink.getvalue().to_pybytes())
            self.folder.fs.move(tmp.path, final.path)  # a rename: atomic on one filesystem
        return final.uri


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
            raise InputError(f"cannot write the label table to {self.table_uri}: {first_line(e)}") from None

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
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())

    def _write(self) -> None:
        if self.location.scheme == "file":  # renewals replace the file whole: a reader never sees half of it
            tmp = f"{self.location.path}.{self.run_id}{TMP_SUFFIX}"
            with open(tmp, "wb") as f:
                f.write(self._record())
            os.replace(tmp, self.location.path)
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
            raise InputError(f"cannot write the label table to {self.table_uri}: {first_line(e)}") from None

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


# --- The driver --------------------------------------------------------------------------------


@dataclass
class LabelSummary:
    source: str  # the folder, file or manifest given
    table: str
    images: int = 0  # image files listed (or in the manifest)
    skipped: int = 0  # other files under the source (other rows of a manifest)
    already: int = 0  # already in the table before this run
    labeled: int = 0  # rows written by this run (errors included)
    errors: Counter = field(default_factory=Counter)  # by reason
    unavailable: int = 0  # files that failed transiently through every retry: no row, a rerun retries them
    unavailable_example: str = ""
    seconds: float = 0.0  # from the pipeline's start (after Ray's) to the last commit
    first_seconds: float = 0.0  # until the first results arrived: actor start-up and one block
    first_rows: int = 0  # rows in that first arrival
    first_since_start: float = 0.0  # the first results, counted from the run's start (listing included)
    files_written: int = 0

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds else 0.0

    @property
    def steady_images_per_second(self) -> float | None:
        """The rate once results flow (start-up excluded), which is what a large bucket sees.

        None when too few rows came after the first arrival to measure it.
        """
        rows, seconds = self.labeled - self.first_rows, self.seconds - self.first_seconds
        return rows / seconds if rows >= 3 * self.first_rows and seconds > 0 else None


def run(cfg: LabelConfig) -> LabelSummary:
    """Label every image of cfg.source (or cfg.manifest) not yet in the table at cfg.out; return what happened.

    `summary.unavailable` counts the images that could not be read for a transient reason: they
    have no row, and rerunning the same command labels exactly them.
    """
    for name in ("batch_size", "actors", "rows_per_file"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    check_abstain_below(cfg.abstain_below)
    if cfg.decode is not None:
        check_decode(cfg.decode)
    source = open_source(cfg.source, cfg.manifest, cfg.s3_endpoint)
    package = read_package_info(cfg.model, cfg.s3_endpoint)  # its weights are checked once Ray runs (checked_weights_ref)
    table = LabelTable(locate(cfg.out, cfg.s3_endpoint))
    table.check()
    with TableLease(table.folder, table.run_id, cfg.force) as lease:
        table.lease = lease
        table.prepare(cfg.overwrite)
        return _label(cfg, source, package, table)


def _label(cfg: LabelConfig, source: Source, package: PackageInfo, table: LabelTable) -> LabelSummary:
    """The run itself, holding the table's lease: what is left to label, through Ray, into the table.

    A folder still being listed is labeled in waves (`Source.waves`): the images listed in the
    first LISTING_HEAD_START seconds start labeling while the listing goes on.
    """
    parts = table.part_files()
    check_same_model(table, parts, package.classes, package.model_id, cfg.abstain_below)
    done = labeled_paths(table.folder.fs, parts)  # Arrow strings: ~60 MB per million paths
    summary = LabelSummary(source.uri, table.folder.uri)
    started, labeling = time.monotonic(), None
    try:
        labeling = _label_waves(cfg, source, package, table, summary, done, started)
    finally:
        if labeling is not None:
            labeling.progress.close()
    return labeling.finish() if labeling else summary


def _label_waves(cfg: LabelConfig, source: Source, package: PackageInfo, table: LabelTable, summary: "LabelSummary", done, started: float) -> "Labeling | None":
    labeling = None
    for wave, rows in enumerate(source.waves(LISTING_HEAD_START)):
        todo = drop_labeled(rows, source.root.scheme, done)  # the set difference, in Arrow
        summary.images, summary.already = summary.images + rows.num_rows, summary.already + rows.num_rows - todo.num_rows
        del rows
        listing = source.listing is not None and not source.listing.finished
        if wave == 0:
            _say_what_is_labeled(source, summary, todo.num_rows, listing)
        elif todo.num_rows:
            print(f"  {summary.images} images listed so far; labeling the next {todo.num_rows}" + ("" if listing else " (the listing is done)"), flush=True)
        if todo.num_rows:
            labeling = labeling or Labeling(cfg, source, package, table, summary, todo.column("path")[0].as_py(), started)
            labeling.label(todo)
        del todo
    summary.skipped = source.other_files
    if wave > 0:  # the totals, now that the listing has ended
        _say_what_is_labeled(source, summary, None, False)
    return labeling


def _say_what_is_labeled(source: Source, s: "LabelSummary", todo: int | None, listing: bool) -> None:
    manifest = source.kind == "manifest"
    if listing:
        print(f"listing {source.uri}: {s.images} images within {LISTING_HEAD_START:g} s; labeling those while the listing goes on", flush=True)
        return
    skipped = source.other_files
    print(
        f"{s.images} images " + (f"in manifest {source.uri}" if manifest else f"under {source.uri}")
        + (f" ({skipped} other {'rows' if manifest else 'files'} skipped)" if skipped else "")
        + (f" ({source.duplicates} duplicate rows counted once)" if source.duplicates else ""),
        flush=True,
    )
    if s.already and todo is not None:
        print(f"{s.already} already in {s.table}; " + (f"labeling the other {todo}" if todo else "nothing left to label"), flush=True)
    elif s.already:
        print(f"{s.already} of them were already in {s.table}", flush=True)


class Labeling:
    """The Ray side of a run, started with its first images to label: the plan, the checked
    weights in the object store, the table's writer; `label` runs one wave of files through a
    Ray Data pipeline into the writer, `finish` commits and completes the summary."""

    def __init__(self, cfg: LabelConfig, source: Source, package: PackageInfo, table: LabelTable, summary: "LabelSummary", first_path: str, started: float):
        import ray

        start_ray(min_cpus=2)  # one CPU for the model, one for decoding
        check_local_paths({f"SOURCE {source.uri}": first_path} if source.root.scheme == "file" else {}, {"--out": table.folder})
        self.plan = _plan(cfg)
        self.weights = checked_weights_ref(locate(cfg.model, cfg.s3_endpoint).uri, cfg.s3_endpoint, package.config)
        plan = self.plan
        print(
            f"model {package.model_id} on {plan.actors} {'GPU' if plan.use_gpu else 'CPU'} actor(s), batch {plan.batch_size}, "
            f"{package.image_size} px, {package.geometry}, decoding on the {'model device' if plan.decode == 'device' else 'CPU'}",
            flush=True,
        )
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = ctx.print_on_execution_start = False  # run() prints progress lines
        self.source, self.package, self.table, self.summary, self.started = source, package, table, summary, started
        self.writer = TableWriter(table, source.root, package.classes, package.model_id, cfg.rows_per_file, cfg.commit_seconds, cfg.abstain_below)
        self.expected = 0
        self.start = time.monotonic()
        self.progress = Progress("labeling", 0).__enter__()

    def label(self, todo: pa.Table) -> None:
        import ray

        writer, summary = self.writer, self.summary
        self.expected += todo.num_rows
        self.progress.add_total(todo.num_rows)
        ds = labeling_dataset(ray.data.from_arrow(file_blocks(todo)), self.source.root.fs, self.package, self.weights, self.plan)
        try:
            with _sigterm_as_interrupt():
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    before = writer.rows + writer.unavailable
                    writer.add(batch)
                    if not summary.first_rows:
                        summary.first_seconds, summary.first_rows = time.monotonic() - self.start, writer.rows
                        summary.first_since_start = time.monotonic() - self.started
                    unavailable = f", {writer.unavailable} unavailable" if writer.unavailable else ""
                    self.progress.advance(writer.rows + writer.unavailable - before, f"{sum(writer.errors.values())} errors{unavailable}")
        except KeyboardInterrupt:
            self.progress.close(final_line=False)
            writer.flush()  # keep what is done: a rerun resumes after it
            print(f"interrupted: {writer.rows} rows committed to {self.table.folder.uri}; rerun the same command to resume", flush=True)
            raise
        except LeaseLost:
            raise
        except Exception as e:
            writer.flush()
            raise RunFailed(f"labeling failed: {first_line(e)} ({writer.rows} rows committed to {self.table.folder.uri}; rerun the same command to resume)") from e
        if writer.rows + writer.unavailable != self.expected:  # an invariant of Ray Data: every input row comes out once
            writer.flush()
            lost = self.expected - writer.rows - writer.unavailable
            raise RunFailed(f"labeling lost {lost} of {self.expected} images; rerun the same command to label them")

    def finish(self) -> "LabelSummary":
        """Commit what is left and complete the summary (the caller has closed `progress`)."""
        self.writer.flush()
        s, writer = self.summary, self.writer
        s.labeled, s.errors = writer.rows, writer.errors
        s.unavailable, s.unavailable_example = writer.unavailable, writer.unavailable_example
        s.seconds, s.files_written = time.monotonic() - self.start, self.table.written
        return s


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


@dataclass(frozen=True)
class Plan:
    """How a run uses the cluster: where the model runs, how many replicas, where JPEGs are decoded."""

    use_gpu: bool
    actors: int  # model replicas
    gpus_per_actor: float  # 0 on CPU; below 1 when several replicas share a GPU
    cpus_per_actor: float  # the replicas of one GPU reserve one CPU together, so decoding keeps the rest
    actors_per_node: int | None  # CPU replicas per node (they share its cores); None on GPUs
    decode: str  # "cpu": reading tasks decode; "device": the model's device decodes JPEGs
    batch_size: int


def _plan(cfg: LabelConfig) -> Plan:
    """The run's Plan from the flags and the cluster (refusing --gpu without GPUs)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu and gpus == 0 and not os.environ.get("RAY_ADDRESS"):
        raise InputError("--gpu given but this machine has no GPU")
    decode = cfg.decode or ("device" if use_gpu else "cpu")
    check_decode(decode)
    batch_size = cfg.batch_size or (GPU_BATCH_SIZE if use_gpu else CPU_BATCH_SIZE)
    if use_gpu:
        actors = cfg.actors or max(gpus, 1) * ACTORS_PER_GPU[decode]
        share = min(1.0, max(gpus, 1) / actors)
        return Plan(True, actors, share, share, None, decode, batch_size)
    here = ray.get_runtime_context().get_node_id()
    cores = [  # per CPU node: its CPUs, and on this node no more than this process may use
        min(int(n["Resources"]["CPU"]), node_cpus()) if n["NodeID"] == here else int(n["Resources"]["CPU"])
        for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")
    ] or [1]
    actors = cfg.actors or len(cores) * max(1, min(CPU_ACTORS_PER_NODE, min(cores)))
    return Plan(False, actors, 0.0, 1, math.ceil(actors / len(cores)), decode, batch_size)


def labeling_dataset(rows, fs: pafs.FileSystem, package: PackageInfo, weights_ref, plan: Plan):
    """The Ray Dataset: file rows {path, size} -> reading tasks (CPU) -> Labeler actors -> {path, probs, error, labeled_at}.

    The reading tasks decode and preprocess (`data.decode_for_labeling`), or with `decode="device"`
    pass JPEG bytes on (`data.read_for_device`): at 299 px, 0.1-0.5 of the bytes through the object
    store and a twentieth of the CPU time (BENCHMARKS.md).
    """
    import ray.data

    return (
        rows.map_batches(
            read_files,
            fn_kwargs={"fs": fs, "image_size": package.image_size, "geometry": package.geometry, "decode": plan.decode},
            batch_size=None,
            batch_format="numpy",
        )
        .map_batches(
            LabelerActor,
            fn_constructor_kwargs={
                "config": package.config, "weights": weights_ref, "use_gpu": plan.use_gpu, "actors_per_node": plan.actors_per_node, "decode": plan.decode,
            },
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.gpus_per_actor,
            num_cpus=plan.cpus_per_actor,
        )
    )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (`ray job stop`, a pod eviction) like Ctrl-C, so finished rows get committed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def format_summary(s: LabelSummary) -> str:
    errors = sum(s.errors.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in s.errors.most_common())
    lines = [
        f"images    {s.images} in {s.source}" + (f" ({s.skipped} other files skipped)" if s.skipped else ""),
        f"labeled   {s.labeled - errors} now" + (f", {s.already} before" if s.already else ""),
        f"errors    {errors}" + (f" ({reasons})" if reasons else ""),
    ]
    if s.unavailable:
        lines.append(f"unavailable {s.unavailable} (no rows: transient read failures through every retry, e.g. {s.unavailable_example})")
    if s.labeled:
        steady = f", {s.steady_images_per_second:.1f} img/s since" if s.steady_images_per_second else ""
        lines.append(
            f"speed     {s.images_per_second:.1f} img/s ({s.labeled} images in {s.seconds:.1f} s; first results after {s.first_seconds:.1f} s, "
            f"{s.first_since_start:.1f} s after the run started{steady})"
        )
    lines.append(f"table     {s.table}" + (f" ({s.files_written} new file(s))" if s.files_written else ""))
    return "\n".join(lines)


# --- Reading a table back ----------------------------------------------------------------------


def pseudo_labeled_images(uri: str, classes: tuple[str, ...], min_confidence: float, s3_endpoint: str | None = None) -> "LabeledImages":
    """The confidently labeled rows of a label table as a labeled dataset: self-training's extra root.

    Rows with a label and a confidence of at least `min_confidence` are kept; the images are read
    where the table says they are. A table of other classes than `classes` is refused.
    """
    table = LabelTable(locate(uri, s3_endpoint))
    parts = table.part_files()
    if not parts:
        raise InputError(f"--pseudo-labels {table.folder.uri} is not a label table (no {PART_PREFIX}*.parquet files)")
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
    from cgi2real.data import LabeledImages  # torch: training calls this, a labeling driver does not

    return LabeledImages(root, tuple(classes), tuple(paths), tuple(labels))


def _common_folder(uris: list[str], where: str) -> str:
    """The deepest folder (or s3:// prefix) holding every one of `uris`, all local or all S3."""
    s3 = [u.startswith("s3://") for u in uris]
    if any(s3) and not all(s3):
        raise InputError(f"--pseudo-labels {where} mixes local and s3:// images; label one source per table")
    if all(s3):
        return "s3://" + os.path.commonpath([os.path.dirname(u[len("s3://"):]) for u in uris])
    return os.path.commonpath([os.path.dirname(u) for u in uris])
