"""Listing a large S3 prefix: one recursive listing in turn against `Location.walk`'s fan-out.

Starts a moto S3 server on loopback behind the tests' proxy (`tests/s3_faults.py`), which adds
--latency seconds to every request as the network to a real S3 region would, fills a bucket with
--folders folders of --keys-per-folder empty keys, and times, in one run:
  serial:   one recursive listing of the prefix (pyarrow: ListObjectsV2, 1,000 keys per request, in turn);
  parallel: `Location.list_files()` (the top level, then each folder whole, LIST_THREADS at once),
            and the label driver's `sources.list_images` (the same, turned into Arrow rows).

    python bench/listing.py --folders 64 --keys-per-folder 2000 --latency 0.05

With --label SECONDS it then labels the prefix (`cgi2real.stages.label.run`, a random-init 75 px package;
the keys are empty files, so every row is an `empty file` error and no time goes to decoding) with
LISTING_HEAD_START set to SECONDS, and reports when the first results came against how long the
listing took.

moto answers each request in Python, one thread at a time, so it bounds what the fan-out gains
here; on S3 the requests are served in parallel.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgi2real.core.classes import DEFAULT_CLASSES  # noqa: E402
from cgi2real.core.config import DEFAULT_GEOMETRY, LabelConfig  # noqa: E402
from cgi2real.model.networks import build_model, package_config, save_model_package  # noqa: E402
from cgi2real.stages import label  # noqa: E402
from cgi2real.storage.listing import list_images  # noqa: E402
from cgi2real.storage.locations import locate, s3_filesystem  # noqa: E402
from tests.conftest import S3_ENV, _free_port  # noqa: E402
from tests.s3_faults import FaultProxy  # noqa: E402

BUCKET = "bench-listing"


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    sys.exit("moto did not start")


def fill(endpoint: str, folders: int, per_folder: int) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    keys = [f"photos/{f:04d}/img_{k:05d}.jpg" for f in range(folders) for k in range(per_folder)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b""), keys))
    return len(keys)


def label_prefix(endpoint: str, head_start: float) -> "label.LabelSummary":
    workdir = tempfile.mkdtemp(prefix="cgi2real-bench-listing-")
    model = build_model(len(DEFAULT_CLASSES), 75, "none")
    save_model_package(model.state_dict(), package_config(model, list(DEFAULT_CLASSES), 75, DEFAULT_GEOMETRY), f"{workdir}/package")
    label.LISTING_HEAD_START = head_start
    cfg = LabelConfig(source=f"s3://{BUCKET}/photos", model=f"{workdir}/package", out=f"{workdir}/labels", s3_endpoint=endpoint)
    summary = label.run(cfg)
    print(label.format_summary(summary))
    return summary


def timed(fn) -> tuple[float, int]:
    start = time.monotonic()
    n = fn()
    return time.monotonic() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=int, default=64)
    parser.add_argument("--keys-per-folder", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--label", type=float, metavar="SECONDS", help="then label the prefix, with this LISTING_HEAD_START")
    args = parser.parse_args()
    os.environ.update(S3_ENV)
    server, endpoint = start_moto()
    try:
        start = time.monotonic()
        n = fill(endpoint, args.folders, args.keys_per_folder)
        print(f"{n} keys in {args.folders} folders written in {time.monotonic() - start:.1f} s; {args.latency * 1000:.0f} ms added per request")
        with FaultProxy(endpoint, latency=args.latency) as proxy:
            fs = s3_filesystem(proxy.endpoint)
            serial_s, serial_n = timed(lambda: sum(i.type == pafs.FileType.File for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/photos", recursive=True))))
            walk_s, walk_n = timed(lambda: len(locate(f"s3://{BUCKET}/photos", proxy.endpoint).list_files()))
            rows_s, rows_n = timed(lambda: list_images(f"s3://{BUCKET}/photos", proxy.endpoint).rows.num_rows)
            if args.label is not None:
                summary = label_prefix(proxy.endpoint, args.label)
        assert serial_n == walk_n == rows_n == n, (serial_n, walk_n, rows_n, n)
        print(f"serial:   one recursive listing      {serial_s:6.2f} s  ({n / serial_s:,.0f} keys/s)")
        print(f"parallel: Location.list_files        {walk_s:6.2f} s  ({n / walk_s:,.0f} keys/s)  {serial_s / walk_s:.1f}x")
        print(f"parallel: sources.list_images (Arrow) {rows_s:5.2f} s  ({n / rows_s:,.0f} keys/s)  {serial_s / rows_s:.1f}x")
        if args.label is not None:
            print(f"label (head start {args.label:g} s): first results {summary.first_since_start:.1f} s after the run started "
                  f"(listing alone: {rows_s:.1f} s); all {summary.labeled} rows after {summary.first_since_start - summary.first_seconds + summary.seconds:.1f} s")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
