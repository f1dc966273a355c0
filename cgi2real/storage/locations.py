"""Local paths and s3:// URIs behind one small interface, through pyarrow filesystems.

The S3 endpoint comes from `--s3-endpoint` or `AWS_ENDPOINT_URL` (pyarrow does not read that
variable itself); credentials come from the normal AWS chain (environment, ~/.aws, instance role).
Nothing here ever prints a credential.
"""

import errno
import functools
import itertools
import os
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cgi2real.core.errors import InputError, RunFailed


def resolve_endpoint(endpoint: str | None) -> str | None:
    """The S3 endpoint to use: the flag's value, else AWS_ENDPOINT_URL, else AWS's default."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL") or None


# A request that sends nothing for this long is abandoned and retried (CGI2REAL_S3_TIMEOUT overrides).
S3_REQUEST_TIMEOUT = 60.0
# Our retries of a transient failure, on top of the S3 client's 3 tries per request: after
# RETRY_SECONDS, then twice as long each time (with jitter).
RETRY_SECONDS = 0.5
# Requests failing for a transient reason (throttling, 5xx, resets, timeouts) are made this many
# times in all (`retried`), on top of the S3 client's own 3 tries of each: listings, reads, writes.
ATTEMPTS = 4
LIST_THREADS = 32  # folders listed at once (the time goes to waiting on S3, not to the CPU)
LIST_DEPTH = 3  # levels listed one at a time, looking for LIST_THREADS folders to list whole


@functools.lru_cache(maxsize=8)
def s3_filesystem(endpoint: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem for `endpoint` (None: AWS), with short timeouts so a bad endpoint fails fast."""
    timeout = float(os.environ.get("CGI2REAL_S3_TIMEOUT") or S3_REQUEST_TIMEOUT)
    options: dict = dict(connect_timeout=5, request_timeout=timeout)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(f"invalid S3 endpoint {endpoint!r}: expected http(s)://HOST[:PORT]")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    options["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    return pafs.S3FileSystem(**options)


@dataclass(frozen=True)
class Location:
    """A file or folder on a local disk or in S3.

    `path` is what the filesystem takes: an absolute local path, or `bucket/key` for S3.
    Locations pickle (pyarrow filesystems do), so they travel into Ray tasks.
    """

    fs: pafs.FileSystem
    path: str
    scheme: str  # "file" or "s3"

    @property
    def uri(self) -> str:
        return self.uri_of(self.path)

    def uri_of(self, path: str) -> str:
        """The URI of another path on this location's filesystem (e.g. a listed file)."""
        return f"s3://{path}" if self.scheme == "s3" else path

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, *parts: str) -> "Location":
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(self.fs, path, self.scheme)

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as e:
            hint = " (check --s3-endpoint or AWS_ENDPOINT_URL, and the AWS credentials)" if self.scheme == "s3" else ""
            raise InputError(f"cannot reach {self.uri}: {first_line(e)}{hint}") from None

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list_files(self) -> list[pafs.FileInfo]:
        """Every file below this folder, recursively, sorted by path."""
        return sorted((i for files in self.walk() for i in files), key=lambda i: i.path)

    def walk(self) -> Iterator[list[pafs.FileInfo]]:
        """The files below this folder, a folder (or a whole sub-tree) at a time, listed LIST_THREADS at once.

        On S3 a request returns at most 1,000 keys, so one listing of a bucket of 10 million images
        waits on 10,000 requests in turn. The top of the tree is listed a level at a time until it
        has LIST_THREADS sub-folders (or LIST_DEPTH levels were listed); each of those is then
        listed whole, all at once. Transient failures are retried (`list_folder`).
        """
        with ThreadPoolExecutor(LIST_THREADS) as pool:
            folders = [self.path]
            for _ in range(LIST_DEPTH):
                if not folders or len(folders) >= LIST_THREADS:
                    break
                found = []
                for infos in self._listed(pool, folders, recursive=False):
                    yield [i for i in infos if i.type == pafs.FileType.File]
                    found += [i.path for i in infos if i.type == pafs.FileType.Directory]
                folders = found
            for infos in self._listed(pool, folders, recursive=True):
                yield [i for i in infos if i.type == pafs.FileType.File]

    def _listed(self, pool: ThreadPoolExecutor, folders: list[str], recursive: bool) -> Iterator[list[pafs.FileInfo]]:
        try:
            yield from pool.map(functools.partial(list_folder, self.fs, recursive=recursive), folders)
        except OSError as e:
            raise InputError(f"cannot list {self.uri}: {first_line(e)}") from None

    def read_bytes(self) -> bytes:
        return retried(lambda: read_whole(self.fs, self.path), ATTEMPTS)

    def write_bytes(self, data: bytes) -> None:
        """Write a file, creating its folder; the file appears whole or not at all on S3."""
        def write() -> None:
            if self.scheme == "file":
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

        retried(write, ATTEMPTS)


class FileTooLarge(OSError):
    """A file over the size a reader accepts (`read_whole(max_bytes=...)`)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes > {limit}")
        self.size, self.limit = size, limit


def read_whole(fs: pafs.FileSystem, path: str, max_bytes: int | None = None) -> bytes:
    """A file's bytes in one request after its size: on S3 a HEAD and one GET.

    Not `open_input_stream(path).read()`: on S3 that fetches the object in 256 KB ranged GETs
    (21 requests for a 5 MB photo, and 38 s for a 95 MB model package from a local S3 server).
    A file over `max_bytes` raises FileTooLarge before its body is fetched.
    """
    with fs.open_input_file(path) as f:
        if max_bytes is not None and f.size() > max_bytes:
            raise FileTooLarge(f.size(), max_bytes)
        return f.read()


UNAVAILABLE = "unavailable"  # the reason of a read that failed transiently through every retry (data.read_file)

# Failures that may pass if the request is made again: S3 throttling and 5xx answers, dropped
# connections, timeouts (as the AWS SDK under pyarrow words them, and as Python raises them).
_TRANSIENT = re.compile(
    r"HTTP status 5\d\d|SLOW_?DOWN|SlowDown|THROTTL|Throttl|NETWORK_CONNECTION|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|"
    r"REQUEST_TIME_?OUT|RequestTimeout|curlCode|[Tt]imed? ?out|[Cc]onnection (reset|refused|aborted)|Broken pipe"
)


def is_transient(error: BaseException) -> bool:
    """Whether a read failed for a reason that may clear on retry, rather than for good."""
    if isinstance(error, (FileNotFoundError, PermissionError, FileTooLarge)):
        return False
    return isinstance(error, (TimeoutError, ConnectionError)) or bool(_TRANSIENT.search(str(error)))


def is_unavailable(error: str | None) -> bool:
    """Whether an error reason is a transient read failure (no row: a rerun tries the file again)."""
    return bool(error) and error.startswith(UNAVAILABLE + ":")


def list_folder(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """A folder's entries (files and sub-folders; with `recursive`, everything below it), retrying
    transient failures (`retried`)."""
    return retried(lambda: fs.get_file_info(pafs.FileSelector(path, recursive=recursive)), ATTEMPTS)


def retried(action, attempts: int):
    """`action()`, made again after a transient failure (`backoff` between tries) up to `attempts`
    times in all; a lasting or final failure raises."""
    for attempt in itertools.count():
        try:
            return action()
        except Exception as e:  # pyarrow's S3 errors are OSErrors; is_transient also reads the text of others
            if not is_transient(e) or attempt + 1 == attempts:
                raise
            backoff(attempt)


# Failures of the storage itself rather than of what the user gave: a rerun may succeed once it is fixed.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def write_failure(error: OSError, what: str) -> InputError | RunFailed:
    """The exception for a write that failed (`what` says which): RunFailed (exit 1) when the storage
    failed (transient through every retry, a full disk, an I/O error), InputError (exit 2) when the
    user must change something (a path, a permission)."""
    message = f"{what}: {first_line(error)}"
    if is_transient(error) or getattr(error, "errno", None) in STORAGE_ERRNOS:
        return RunFailed(f"{message}; rerun the same command once the storage works again")
    return InputError(message)


def backoff(attempt: int) -> None:
    """Wait before retry `attempt + 1` of a transient failure: RETRY_SECONDS, doubling, with jitter."""
    time.sleep(RETRY_SECONDS * 2**attempt * random.uniform(0.5, 1.5))


def check_bucket(location: Location, option: str) -> None:
    """Refuse an s3:// output whose bucket does not exist (before any work that would be lost)."""
    if location.scheme == "s3" and not Location(location.fs, location.path.split("/")[0], "s3").exists():
        raise InputError(f"bucket of {option} {location.uri} does not exist")


def check_output(out: Location, option: str, inputs: list[tuple[str, Location]], what: str, markers: tuple[str, ...] = (), overwrite: bool = False) -> None:
    """Refuse an output before any work: a file where the folder for `what` is meant, a folder that is
    one of the `inputs` (named as the user gave them) or inside one, an S3 bucket that does not exist.

    With `markers` (the files that say a folder holds a `what`: a package's config.json and
    model.safetensors), a folder that holds one already is replaced only with `overwrite`, and one that holds other files never.
    """
    check_bucket(out, option)
    kind = out.info().type
    if kind == pafs.FileType.File:
        raise InputError(f"{option} {out.uri} is a file; give a folder for the {what}")
    for name, place in inputs:
        if place.scheme == out.scheme and _within(out, place):
            raise InputError(f"{option} {out.uri} is inside {name} {place.uri}: the {what} would be written among the inputs; give another folder")
    if not markers or kind != pafs.FileType.Directory:
        return
    a = "an" if what[0] in "aeiou" else "a"
    present = out.fs.get_file_info(pafs.FileSelector(out.path, allow_not_found=True))  # one listing of the folder's top level
    if any(info.base_name in markers for info in present):
        if not overwrite:
            raise InputError(f"{option} {out.uri} holds {a} {what} already; pass --overwrite to replace it, or give another folder")
        return
    if present:
        raise InputError(f"{option} {out.uri} holds other files (e.g. {out.uri_of(present[0].path)}), not {a} {what}; give a new or empty folder")


def _within(inner: Location, outer: Location) -> bool:
    a, b = (os.path.realpath(x.path) if x.scheme == "file" else x.path.rstrip("/") for x in (inner, outer))
    return a == b or a.startswith(b.rstrip("/") + "/")


def locate(uri: str, s3_endpoint: str | None = None) -> Location:
    """Turn a local path or s3:// URI into a Location (nothing is read yet)."""
    if not uri:
        raise InputError("empty path")
    if uri.startswith("s3://"):
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise InputError(f"invalid S3 URI {uri!r}: expected s3://BUCKET[/PREFIX]")
        return Location(s3_filesystem(resolve_endpoint(s3_endpoint)), path, "s3")
    if "://" in uri:
        raise InputError(f"unsupported URI {uri!r}: use a local path or s3://BUCKET/PREFIX")
    return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)), "file")


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (pyarrow's S3 errors run long)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
