"""Batch labeling: stream image files through a model package into a Parquet label table.

The pipeline is Ray Data (`pipelines.labeling`): listing tasks (or a manifest) give the files not
labeled yet (`storage.listing`); CPU tasks read, decode and apply the eval preset; a pool of
`Labeler` actors turns uint8 batches into probabilities. This driver writes the table itself
(`formats.label_table`): the rows are tiny next to the images, and one writer can keep exactly
one row per path, commit each Parquet file whole, and report progress. It never imports torch.

A file that fails to read for a transient reason (throttling, 5xx, a reset, a timeout) through
every retry gets no row: the run says how many and exits non-zero, and a rerun tries exactly those.
"""

import contextlib
import math
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from cgi2real.core.config import CPU_BATCH_SIZE, GPU_BATCH_SIZE, LabelConfig
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.label_table import LabelTable, LeaseLost, TableLease, TableWriteFailed, TableWriter, check_same_model
from cgi2real.formats.package import PackageInfo, read_package_info
from cgi2real.pipelines.labeling import REFUSED, Plan, labeling_dataset, put_weights
from cgi2real.runtime.cluster import check_local_paths, node_cpus, start_ray, use_gpus
from cgi2real.runtime.progress import Progress
from cgi2real.storage.listing import Source, drop_labeled, file_blocks, labeled_paths, open_source
from cgi2real.storage.locations import check_output, first_line, locate

LISTING_HEAD_START = 10.0  # seconds a folder is listed before labeling starts, if its listing has not ended by then
# Model replicas sharing one GPU, by where JPEGs are decoded: while one replica frames pictures or
# waits for its batch, another computes (BENCHMARKS.md: on one H100, device decoding ran 2,124 img/s
# with 2 and 2,471 with 4; CPU decoding 2,434 with 1 and 2,972-3,316 with 2).
ACTORS_PER_GPU = {"device": 4, "cpu": 2}
# On CPU nodes, one model replica per core (up to this many per node, which then share the cores
# in threads): on 2 cores two one-thread replicas labeled 15 % faster than one two-thread replica,
# which loses time at every thread barrier whenever Ray's own processes take a core (BENCHMARKS.md).
CPU_ACTORS_PER_NODE = 8


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
    source, package, table = _opened(cfg)
    with TableLease(table.folder, table.run_id, cfg.force) as lease:
        table.lease = lease
        table.prepare(cfg.overwrite)
        return _label(cfg, source, package, table)


def _opened(cfg: LabelConfig) -> tuple[Source, PackageInfo, LabelTable]:
    """The settings, the source (its listing started), the package's config (its weights are checked
    once Ray runs: put_weights) and the table's folder, checked before anything is written."""
    cfg.check()
    source = open_source(cfg.source, cfg.manifest, cfg.s3_endpoint)
    package = read_package_info(cfg.model, cfg.s3_endpoint)
    table = LabelTable(locate(cfg.out, cfg.s3_endpoint))
    check_output(table.folder, "--out", [("SOURCE", source.root)] if source.kind == "listing" else [], "label table")
    table.check()
    return source, package, table


def dry_run(cfg: LabelConfig) -> list[str]:
    """What `run` would label, checked as it checks it, without Ray or writing anything: the whole
    source is listed (a large bucket takes its listing time) and set against the table."""
    source, package, table = _opened(cfg)
    existing = table.part_files()
    parts = [] if cfg.overwrite else existing
    check_same_model(table, parts, package.classes, package.model_id, cfg.abstain_below)
    done = labeled_paths(table.folder.fs, parts)
    images = todo = 0
    for rows in source.waves(math.inf):
        images += rows.num_rows
        todo += drop_labeled(rows, source.root.scheme, done).num_rows
    skipped = f" ({source.other_files} other files skipped)" if source.other_files else ""
    already = f"; {images - todo} in the table already" if images - todo else ""
    replaced = " (the table there is deleted first: --overwrite)" if cfg.overwrite and existing else ""
    return [
        f"{images} images in {source.uri}{skipped}{already}",
        f"would label {todo} with {package.model_id} ({package.arch}, {', '.join(package.classes)}) into {table.folder.uri}{replaced}",
    ]


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

        start_ray(min_cpus=2)  # one CPU for the model, one for decoding
        check_local_paths({f"SOURCE {source.uri}": first_path} if source.root.scheme == "file" else {}, {"--out": table.folder})
        self.plan = _plan(cfg)
        folder = locate(cfg.model, cfg.s3_endpoint)
        self.package_uri, self.weights = folder.uri, put_weights(folder, package)
        plan = self.plan
        print(
            f"model {package.model_id} on {plan.actors} {'GPU' if plan.use_gpu else 'CPU'} actor(s), batch {plan.batch_size}, "
            f"{package.image_size} px, {package.geometry}, decoding on the {'model device' if plan.decode == 'device' else 'CPU'}",
            flush=True,
        )
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
        ds = labeling_dataset(ray.data.from_arrow(file_blocks(todo)), self.source.root.fs, self.package, self.package_uri, self.weights, self.plan)
        try:
            with _sigterm_as_interrupt():
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    if not summary.first_rows and len(batch["error"]) and str(batch["error"][0]).startswith(REFUSED):
                        raise InputError(batch["error"][0].removeprefix(REFUSED))  # the package does not fit its network
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
        except (LeaseLost, TableWriteFailed, InputError):  # nothing more can be written (what is committed stays), or the package was refused
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


def _plan(cfg: LabelConfig) -> Plan:
    """The run's Plan from the flags and the cluster (refusing --gpu without GPUs)."""
    import ray

    use_gpu = use_gpus(cfg.use_gpu, 1)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    decode = cfg.decode or ("device" if use_gpu else "cpu")
    batch_size = cfg.batch_size or (GPU_BATCH_SIZE if use_gpu else CPU_BATCH_SIZE)
    if use_gpu:
        actors = cfg.actors or max(gpus, 1) * ACTORS_PER_GPU[decode]
        share = min(1.0, max(gpus, 1) / actors)
        return Plan(True, actors, share, share, None, decode, batch_size, cfg.compile)
    here = ray.get_runtime_context().get_node_id()
    cores = [  # per CPU node: its CPUs, and on this node no more than this process may use
        min(int(n["Resources"]["CPU"]), node_cpus()) if n["NodeID"] == here else int(n["Resources"]["CPU"])
        for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")
    ] or [1]
    actors = cfg.actors or len(cores) * max(1, min(CPU_ACTORS_PER_NODE, min(cores)))
    return Plan(False, actors, 0.0, 1, math.ceil(actors / len(cores)), decode, batch_size, cfg.compile)


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
