"""What a label run labels: the images under a folder or s3:// prefix, or those a manifest lists.

A folder is walked on the driver, many sub-folders at a time (`list_images`). A manifest (a Parquet or CSV file with
a `path` column, or an S3 Inventory report) is read in batches as Arrow columns. Either way the
images already in the label table are dropped with Arrow (`is_in` against the table's sorted
paths, in batches), never with a Python set of millions of strings.
"""

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cgi2real.core.classes import IMAGE_EXTENSIONS, MASKS_FOLDER
from cgi2real.core.errors import InputError
from cgi2real.storage.locations import Location, first_line, locate

FILE_ROWS = pa.schema([pa.field("path", pa.string()), pa.field("size", pa.int64())])  # size -1: not known yet
IMAGE_PATH = r"\.(" + "|".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)) + r")$"
BLOCK_ROWS = 64  # file rows per block into the reading tasks: enough blocks to keep every core busy
FIRST_BLOCKS, FIRST_BLOCK_ROWS = 32, 8  # smaller blocks first: the first results come sooner, and small runs spread
DIFF_ROWS = 1 << 16  # paths per range of the set difference and the de-duplication (bounds the driver's memory)
MANIFEST_BATCH_ROWS = 1 << 18  # rows per batch read from a Parquet manifest


def image_mask(paths: pa.Array) -> pa.Array:
    """Which paths name an image file to label (by extension, any case; figure masks are not)."""
    extension = pc.match_substring_regex(paths, IMAGE_PATH, ignore_case=True)
    return pc.and_(extension, pc.invert(pc.match_substring(paths, f"/{MASKS_FOLDER}/")))


def uris_of(paths: pa.Array, scheme: str) -> pa.Array:
    """Filesystem paths (`bucket/key` on S3) as the URIs a label table stores."""
    return pc.binary_join_element_wise("s3://", paths, "") if scheme == "s3" else paths


def file_blocks(rows: pa.Table) -> list[pa.Table]:
    """File rows cut into blocks for the reading tasks: FIRST_BLOCKS of FIRST_BLOCK_ROWS, then BLOCK_ROWS each."""
    blocks, start = [], 0
    while start < rows.num_rows:
        size = FIRST_BLOCK_ROWS if len(blocks) < FIRST_BLOCKS else BLOCK_ROWS
        blocks.append(rows.slice(start, size))
        start += size
    return blocks


# --- Paths already labeled ---------------------------------------------------------------------


def labeled_paths(fs: pafs.FileSystem, parts: list[str]) -> pa.ChunkedArray:
    """The `path` column of a label table's part files (URIs), read one file at a time: ~70 MB per million paths."""
    return pa.chunked_array(
        [pq.read_table(part, columns=["path"], filesystem=fs, use_threads=False).column("path").combine_chunks() for part in parts], pa.string()
    )


def drop_labeled(rows: pa.Table, scheme: str, done: pa.ChunkedArray) -> pa.Table:
    """The file rows whose URI is not in `done` (the table's paths); sorted rows stay sorted.

    A hash set of a million paths takes over 200 MB; instead both sides are cut into the same
    ranges of values (`range_cuts`), and each range of `rows` is checked against that range of
    `done` alone.
    """
    if not len(done) or not rows.num_rows:
        return rows
    cuts = range_cuts([uris_of(_sample(rows.column("path")), scheme), _sample(done)], max(rows.num_rows, len(done)))
    labeled = pa.table({"path": done})
    prefix = len("s3://") if scheme == "s3" else 0  # row paths are bucket/key on S3: the prefix does not change the order
    kept = []
    for low, high in _ranges(cuts):
        part = _within(rows, low and low[prefix:], high and high[prefix:])
        known = pc.is_in(uris_of(part.column("path"), scheme), value_set=_within(labeled, low, high).column("path"))
        kept.append(part.filter(pc.invert(known)))
    return pa.concat_tables(kept)


def range_cuts(samples: list[pa.Array], values: int) -> list[str]:
    """Path values cutting `values` paths, of which `samples` are random draws, into ranges of
    about DIFF_ROWS each (none for fewer)."""
    ranges = math.ceil(values / DIFF_ROWS)
    if ranges <= 1:
        return []
    drawn = pc.unique(pa.chunked_array(samples, pa.string()))
    drawn = pc.take(drawn, pc.sort_indices(drawn)).to_pylist()
    return sorted({drawn[len(drawn) * k // ranges] for k in range(1, ranges)})


def _ranges(cuts: list[str]) -> list[tuple[str | None, str | None]]:
    """(low, high) bounds of the ranges `cuts` make; None: unbounded."""
    return list(zip([None, *cuts], [*cuts, None]))


def _sample(values: pa.Array | pa.ChunkedArray, n: int = 4096) -> pa.Array:
    """About `n` values drawn at random (with replacement), reproducibly; chunk by chunk, as a take
    across the chunks of a large ChunkedArray would first copy them into one."""
    rng, total = np.random.default_rng(0), len(values)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    drawn = [pc.take(c, pa.array(rng.integers(0, len(c), math.ceil(n * len(c) / total)), pa.int64())) for c in chunks if len(c)]
    return pa.concat_arrays(drawn) if drawn else pa.array([], pa.string())


def _within(table: pa.Table, low: str | None, high: str | None) -> pa.Table:
    """The rows with low <= path < high (None: unbounded), in one filter (one copy of the range only)."""
    paths = table.column("path")
    masks = ([pc.greater_equal(paths, low)] if low is not None else []) + ([pc.less(paths, high)] if high is not None else [])
    if not masks:
        return table
    return table.filter(masks[0] if len(masks) == 1 else pc.and_(*masks))


# --- What to label ------------------------------------------------------------------------------


@dataclass
class Source:
    """The images of a run, listed from a folder (or one file) or read from a manifest.

    Not frozen: the run takes `rows` out once it has kept the new ones (`take_rows`).
    """

    uri: str  # what the user gave: a folder, a file or a manifest
    kind: str  # "listing" (a folder or file) or "manifest"
    root: Location  # the filesystem of `rows` (for a folder or file: that folder or file)
    rows: pa.Table | None  # {path, size}, de-duplicated; None once taken (or while a listing goes on)
    skipped: int = 0  # files (or manifest rows) that are not images
    duplicates: int = 0  # rows of a manifest naming an image listed before
    listing: "Listing | None" = None  # a folder's listing, going on in the background (`waves`)

    def take_rows(self) -> pa.Table | None:
        """The file rows, handed over: the Source keeps no reference (a manifest's can be large)."""
        rows, self.rows = self.rows, None
        return rows

    def waves(self, head_start: float) -> Iterator[pa.Table]:
        """The rows to label, in waves: a manifest's (or one file's) at once; a folder's first those
        listed within `head_start` seconds (all of them if the listing ends first), then each time
        what was listed meanwhile, at least twice the last wave (or the rest); `head_start` inf: all
        of them at once."""
        if self.listing is None:
            yield self.take_rows()
            return
        wave = self.listing.take(math.inf, None if head_start == math.inf else time.monotonic() + head_start)
        while wave is not None:
            size = wave.num_rows
            yield wave
            del wave
            wave = self.listing.take(2 * size)

    @property
    def other_files(self) -> int:
        """Files (or manifest rows) that are not images: so far, while a listing goes on."""
        return self.listing.skipped if self.listing is not None else self.skipped


def open_source(source: str | None, manifest: str | None, s3_endpoint: str | None = None) -> Source:
    """The Source of a run from SOURCE or --manifest (exactly one); refuse what cannot be labeled."""
    if (source is None) == (manifest is None):
        raise InputError("give SOURCE (a folder, s3:// prefix or image file) or --manifest" + (", not both" if source else ""))
    return read_manifest(manifest, s3_endpoint) if manifest is not None else start_listing(source, s3_endpoint)


def list_images(uri: str, s3_endpoint: str | None = None) -> Source:
    """The image files under a folder or s3:// prefix (or a single image file), sorted by path; refuse none."""
    source = start_listing(uri, s3_endpoint)
    if source.listing is not None:
        source.rows = source.listing.take(math.inf)
        source.skipped, source.listing = source.listing.skipped, None
    return source


def start_listing(uri: str, s3_endpoint: str | None = None) -> Source:
    """The Source of a folder or s3:// prefix, its `listing` started in the background; of a single
    file, its one row. Figure masks in `_masks/` folders are not images to label."""
    root = locate(uri, s3_endpoint)
    info = root.info()
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"source {root.uri} does not exist")
    if info.type == pafs.FileType.File:
        row = _file_rows([info])
        if not image_mask(row.column("path"))[0].as_py():
            raise InputError(f"source {root.uri} has no image files (1 other files); images end in {', '.join(sorted(IMAGE_EXTENSIONS))}")
        return Source(root.uri, "listing", root, row)
    return Source(root.uri, "listing", root, None, listing=Listing(root))


class Listing:
    """A folder being listed in a background thread (`storage.Location.walk`), its image rows taken
    in waves while the listing goes on (`take`), so that labeling need not wait for its end."""

    def __init__(self, root: Location):
        self.root = root
        self.listed = self.images = 0  # files listed so far, and image files among them
        self.finished = False
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._walk, name=f"listing {root.uri}", daemon=True).start()

    @property
    def skipped(self) -> int:
        return self.listed - self.images

    def _walk(self) -> None:
        try:
            for files in self.root.walk():
                rows = _file_rows(files)
                images = rows.filter(image_mask(rows.column("path")))
                with self._changed:
                    self._pending.append(images)
                    self._pending_rows += images.num_rows
                    self.listed, self.images = self.listed + len(files), self.images + images.num_rows
                    self._changed.notify_all()
        except BaseException as e:  # handed to the thread taking the rows
            self._error = e
        finally:
            with self._changed:
                self.finished = True
                self._changed.notify_all()

    def take(self, min_rows: float, deadline: float | None = None) -> pa.Table | None:
        """The image rows listed since the last take (sorted by path), once there are `min_rows` of
        them, or some and it is past `deadline` (time.monotonic), or the listing has ended; None
        once all were taken. Refuses a folder without images."""
        def ready() -> bool:
            late = deadline is not None and time.monotonic() >= deadline and self._pending_rows > 0
            return self.finished or self._pending_rows >= min_rows or late

        with self._changed:
            while not ready():
                self._changed.wait(timeout=None if deadline is None else max(0.01, deadline - time.monotonic()))
            if self._error is not None:
                raise self._error
            if self.finished and not self.images:
                other = f" ({self.listed} other files)" if self.listed else ""
                raise InputError(f"source {self.root.uri} has no image files{other}; images end in {', '.join(sorted(IMAGE_EXTENSIONS))}")
            if not self._pending_rows:
                return None
            rows, self._pending, self._pending_rows = pa.concat_tables(self._pending), [], 0
        return rows.sort_by("path")


def _file_rows(files: list[pafs.FileInfo]) -> pa.Table:
    return pa.table({"path": [i.path for i in files], "size": [i.size for i in files]}, schema=FILE_ROWS)


# --- Manifests ---------------------------------------------------------------------------------


def read_manifest(uri: str, s3_endpoint: str | None = None) -> Source:
    """Read a manifest: a Parquet or CSV file with a `path` column (absolute paths or s3:// URIs),
    or an S3 Inventory report (`manifest.json`, or one of its Parquet data files).

    The file is read in batches, each filtered to image paths before the next, so the driver holds
    the images' paths and little else.
    """
    location = locate(uri, s3_endpoint)
    info = location.info()
    if info.type != pafs.FileType.File:
        raise InputError(f"--manifest {location.uri} " + ("does not exist" if info.type == pafs.FileType.NotFound else "is not a file"))
    paths, sizes, schemes, skipped = [], [], set(), 0
    try:
        for batch_paths, batch_sizes, scheme, dropped in _manifest_batches(location, s3_endpoint):
            images = image_mask(batch_paths)
            paths.append(batch_paths.filter(images))
            sizes.append(pc.fill_null(batch_sizes.filter(images), -1))
            skipped += dropped + len(batch_paths) - len(paths[-1])
            schemes.update([scheme] if len(batch_paths) else [])
    except InputError:
        raise
    except (OSError, pa.ArrowInvalid, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read --manifest {location.uri}: {first_line(e)}") from None
    if len(schemes) > 1:
        raise InputError(f"--manifest {location.uri} mixes s3:// URIs and local paths; give one kind per manifest")
    rows = pa.table({"path": pa.chunked_array(paths, pa.string()), "size": pa.chunked_array(sizes, pa.int64())})
    del paths, sizes
    unique = _deduplicated(rows).cast(FILE_ROWS)
    duplicates = rows.num_rows - unique.num_rows
    del rows
    pa.default_memory_pool().release_unused()  # the batches' buffers: the driver keeps only the paths
    if not unique.num_rows:
        raise InputError(f"--manifest {location.uri} lists no image files ({skipped} other rows); images end in {', '.join(sorted(IMAGE_EXTENSIONS))}")
    first = unique.column("path")[0].as_py()
    root = locate("s3://" + first.split("/", 1)[0] if schemes == {"s3"} else "/", s3_endpoint)
    return Source(location.uri, "manifest", root, unique, skipped, duplicates)


def _deduplicated(rows: pa.Table) -> pa.Table:
    """One row per path (the largest size given); `rows` as given when no path repeats. Checked one
    range of paths at a time, as a hash of all the paths at once takes several times their memory."""
    bounds = _ranges(range_cuts([_sample(rows.column("path"))], rows.num_rows))
    if all(_distinct(_within(rows, low, high)) for low, high in bounds):
        return rows
    grouped = [_within(rows, low, high).group_by("path").aggregate([("size", "max")]) for low, high in bounds]
    return pa.concat_tables(pa.table({"path": g.column("path"), "size": g.column("size_max")}) for g in grouped)


def _distinct(rows: pa.Table) -> bool:
    return pc.count_distinct(rows.column("path")).as_py() == rows.num_rows


def _manifest_batches(location: Location, s3_endpoint: str | None):
    """Yield (filesystem paths, sizes, scheme, rows dropped) per batch of a manifest file."""
    name = location.name.lower()
    if name.endswith(".json"):
        yield from _inventory(location, s3_endpoint)
    elif name.endswith(".parquet"):
        for batch in _parquet_batches(location):
            yield _path_rows(batch, location.uri)
    elif name.endswith((".csv", ".csv.gz")):
        for batch in _csv_batches(location):
            yield _path_rows(batch, location.uri)
    else:
        raise InputError(
            f"--manifest {location.uri}: expected a .parquet or .csv(.gz) file with a path column, or an S3 Inventory manifest.json"
        )


def _parquet_batches(location: Location):
    with location.fs.open_input_file(location.path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=MANIFEST_BATCH_ROWS)


def _csv_batches(location: Location, names: list[str] | None = None):
    """A CSV file's record batches (gunzipped if it ends in .gz), as strings; with `names`, it has no header row."""
    import pyarrow.csv as pacsv

    stream = location.fs.open_input_stream(location.path)  # gunzips a .gz file (compression="detect")
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 20) if names else pacsv.ReadOptions(block_size=1 << 20)
    columns = {name: pa.string() for name in names or []}
    convert = pacsv.ConvertOptions(strings_can_be_null=False, column_types=columns)
    with stream, pacsv.open_csv(stream, read_options=read, convert_options=convert) as reader:
        yield from reader


def _path_rows(batch: pa.RecordBatch, where: str) -> tuple[pa.Array, pa.Array, str, int]:
    """A batch with a `path` column (and optionally `size`) -> (filesystem paths, sizes, scheme, rows dropped)."""
    columns = {c.lower(): c for c in batch.schema.names}
    if "path" not in columns:
        if {"bucket", "key"} <= set(columns):  # an S3 Inventory Parquet data file
            return _inventory_rows(batch, columns, url_encoded=False)
        raise InputError(f"--manifest {where} has no path column (columns: {', '.join(batch.schema.names[:8])})")
    paths = batch.column(columns["path"]).cast(pa.string())
    present = pc.fill_null(pc.not_equal(paths, ""), False)
    blank = len(paths) - (pc.sum(present).as_py() or 0)
    if blank:
        batch, paths = batch.filter(present), paths.filter(present)
    n_s3 = pc.sum(pc.starts_with(paths, "s3://")).as_py() or 0
    if 0 < n_s3 < len(paths):
        raise InputError(f"--manifest {where} mixes s3:// URIs and local paths; give one kind per manifest")
    if n_s3:
        paths = pc.utf8_slice_codeunits(paths, 5)
    elif len(paths) and not pc.all(pc.starts_with(paths, "/")).as_py():
        example = paths.filter(pc.invert(pc.starts_with(paths, "/")))[0].as_py()
        raise InputError(f"--manifest {where} has a relative path ({example!r}): give absolute paths or s3:// URIs")
    sizes = batch.column(columns["size"]).cast(pa.int64()) if "size" in columns else pa.nulls(len(paths), pa.int64())
    return paths, sizes, "s3" if n_s3 else "file", blank


INVENTORY_CSV = "CSV"


def _inventory(location: Location, s3_endpoint: str | None):
    """An S3 Inventory report's manifest.json -> its data files' batches (paths, sizes, "s3", rows dropped)."""
    manifest = json.loads(location.read_bytes())
    if not isinstance(manifest, dict) or "files" not in manifest or "fileFormat" not in manifest:
        raise InputError(f"--manifest {location.uri} is not an S3 Inventory manifest.json (no files / fileFormat)")
    fmt = manifest["fileFormat"]
    destination = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1] or location.path.split("/", 1)[0]
    if fmt not in (INVENTORY_CSV, "Parquet"):
        raise InputError(f"--manifest {location.uri}: inventory format {fmt} is not supported (CSV or Parquet)")
    for entry in manifest["files"]:
        data = locate(f"s3://{destination}/{entry['key']}", s3_endpoint)
        if fmt == INVENTORY_CSV:
            batches = _csv_batches(data, [n.strip() for n in manifest["fileSchema"].split(",")])
        else:
            batches = _parquet_batches(data)
        for batch in batches:
            yield _inventory_rows(batch, {c.lower(): c for c in batch.schema.names}, url_encoded=fmt == INVENTORY_CSV)


def _inventory_rows(batch: pa.RecordBatch, columns: dict, url_encoded: bool) -> tuple[pa.Array, pa.Array, str, int]:
    """Inventory rows -> (bucket/key paths, sizes, "s3", rows dropped): current versions only, no delete markers."""
    keep = pa.array([True] * batch.num_rows)
    for column, wanted in (("isdeletemarker", False), ("is_delete_marker", False), ("islatest", True), ("is_latest", True)):
        if column in columns:
            values = batch.column(columns[column])
            values = values if values.type == pa.bool_() else pc.equal(pc.utf8_lower(values.cast(pa.string())), "true")
            keep = pc.and_(keep, pc.equal(values, wanted))
    rows = batch.filter(keep)
    keys = rows.column(columns["key"]).cast(pa.string())
    if url_encoded:  # inventory CSVs URL-encode keys (a space is "+")
        keys = pa.array([unquote_plus(k) for k in keys.to_pylist()], pa.string())
    paths = pc.binary_join_element_wise(rows.column(columns["bucket"]).cast(pa.string()), keys, "/")
    sizes = rows.column(columns["size"]).cast(pa.int64()) if "size" in columns else pa.nulls(rows.num_rows, pa.int64())
    return paths, sizes, "s3", batch.num_rows - rows.num_rows
