"""Reading whole files, local or S3, with the retries of transient failures; one file's failure is its reason, never an exception."""

import functools
from concurrent.futures import ThreadPoolExecutor

from cgi2real.storage.locations import ATTEMPTS, UNAVAILABLE, FileTooLarge, first_line, is_transient, read_whole, retried

# Files larger than this are reported, not read: no image we can use is that big.
MAX_FILE_BYTES = 256 * 2**20


# A read failing for a transient reason through all its tries (`locations.retried`) is
# "unavailable": not a property of the file.
READ_ATTEMPTS = ATTEMPTS


def read_file(fs, path: str, size: int | None = None) -> tuple[bytes | None, str | None]:
    """The bytes of one file, or (None, a short reason it cannot be read).

    Transient failures are retried (READ_ATTEMPTS); a reason starting with UNAVAILABLE says they
    did not clear, and `is_unavailable` tells it from the final ones (file not found, too large, ...).
    """
    if size is not None and size > MAX_FILE_BYTES:
        return None, f"too large: {size} bytes > {MAX_FILE_BYTES}"
    try:
        return retried(lambda: read_whole(fs, path, MAX_FILE_BYTES), READ_ATTEMPTS), None
    except FileTooLarge as e:
        return None, f"too large: {e.size} bytes > {MAX_FILE_BYTES}"
    except Exception as e:  # one file's failure, whatever it is, is that file's alone
        return None, f"{UNAVAILABLE}: {first_line(e)}" if is_transient(e) else _read_error(e)


def _read_error(error: Exception) -> str:
    text = str(error)
    if isinstance(error, PermissionError) or "ACCESS_DENIED" in text or "AccessDenied" in text:
        return "permission denied"
    if isinstance(error, FileNotFoundError) or "NOT_FOUND" in text or "NoSuchKey" in text:
        return "file not found"
    return f"cannot read: {first_line(error)}"


@functools.lru_cache(maxsize=1)
def reader_pool() -> ThreadPoolExecutor:
    # One per process: reading overlaps S3 latency, and PIL releases the GIL while decoding.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="cgi2real-read")
