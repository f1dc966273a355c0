"""Shared fixtures: generated class-folder images, a moto S3 server on loopback, one Ray per module."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from cgi2real.cli import app
from cgi2real.model.networks import build_model
from cgi2real.stages.synth import write_dataset
from tests.labeling import make_package, write_zoo
from tests.s3_faults import FaultProxy

# Fake credentials for the local S3 server; set before Ray starts so its workers inherit them.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Ray Train's controller polls its workers every 2 s: each report waited for a poll, and each
# run's end for one more. Polled every 0.25 s, a run of 4 reports took 7.8 s instead of 17.5 s
# (inherited by the Ray instances and the `cgi2real` processes that tests start).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """Factory: a class-folder dataset of generated JPEGs, made once per (per_class, size, seed)."""
    made = {}

    def make(per_class: int = 24, size: int = 96, seed: int = 0) -> str:
        key = (per_class, size, seed)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"images_{per_class}_{size}_{seed}")
            write_dataset(str(folder), per_class, size=size, seed=seed, processes=2)
            made[key] = str(folder)
        return made[key]

    return make


def invoke(*args, code: int | None = 0):
    """Run the CLI in-process with `args`; assert its exit code (unless `code` is None); return the result."""
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="cgi2real")
    if code is not None:
        assert result.exit_code == code, result.output + repr(result.exception)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_request_log(tmp_path_factory):
    """The access log of the moto server: one line per HTTP request it answered."""
    return tmp_path_factory.mktemp("moto") / "requests.log"


@contextlib.contextmanager
def s3_requests(log):
    """Counts, by HTTP method, of the requests the S3 server answered inside the block."""
    counts: Counter = Counter()
    before = len(log.read_text().splitlines())
    yield counts
    time.sleep(0.3)  # the server writes its log line after answering
    for line in log.read_text().splitlines()[before:]:
        method = re.search(r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|POST|DELETE) ', line)
        if method:
            counts[method.group(1)] += 1


@pytest.fixture(scope="session")
def s3_endpoint(s3_request_log):
    """A real S3 API (moto in server mode) on 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    os.environ.update(S3_ENV)
    log = open(s3_request_log, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto S3 server did not start")
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait(timeout=10)
    log.close()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in S3_ENV.items() if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client, request):
    """A fresh, empty bucket named after the test."""
    name = "t-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:50].strip("-")
    s3_client.create_bucket(Bucket=name)
    return name


def upload_folder(s3_client, folder: str, bucket: str, prefix: str) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            s3_client.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, folder)}")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance per test module (start-up takes seconds), with S3 credentials set."""
    import ray

    os.environ.update(S3_ENV)
    ray.init(address="local", num_cpus=4)  # not a `ray start` head or a Cluster another test process runs
    yield ray
    ray.shutdown()


def kill_after_checkpoint(command: list[str], run_folder, env: dict, epoch: int = 1) -> str:
    """Start `command` in its own session, SIGKILL it (driver and local Ray) once Ray Train has
    recorded checkpoint `epoch` in `run_folder`; return what it printed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while not (snapshot.exists() and f"epoch_{epoch:04d}" in snapshot.read_text()):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    return process.communicate()[0]


# --- Shared models, images and S3 faults ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(3, 96, "none")


@pytest.fixture(scope="session")
def package(image_root, tmp_path_factory):
    return make_package(str(tmp_path_factory.mktemp("pkg") / "pkg"), image_root(16, 96))


@pytest.fixture(scope="session")
def source(image_root, tmp_path_factory):
    """48 generated JPEGs in class folders plus the zoo; returns (folder, zoo reasons)."""
    folder = tmp_path_factory.mktemp("source") / "images"
    shutil.copytree(image_root(16, 96), folder)
    return str(folder), write_zoo(str(folder / "zoo"))


TIMEOUT = "2"  # seconds without a byte before the S3 client abandons a request (a stall)


@pytest.fixture(scope="session")
def photos(image_root, s3_client, tmp_path_factory):
    """A bucket "scale-photos" with 12 generated JPEGs under photos/ and three broken files; returns their keys."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    shutil.copytree(image_root(4, 96), folder, ignore=shutil.ignore_patterns("_masks"))
    write_zoo(str(folder / "zoo"))
    for name in os.listdir(folder / "zoo"):
        if name not in ("truncated.jpg", "text.jpg", "zero_bytes.jpg"):
            os.remove(folder / "zoo" / name)
    s3_client.create_bucket(Bucket="scale-photos")
    upload_folder(s3_client, str(folder), "scale-photos", "photos")
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket="scale-photos")["Contents"])
    assert len(keys) == 15
    return keys


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    os.environ["CGI2REAL_S3_TIMEOUT"] = TIMEOUT  # before the proxy's filesystem is made (and cached)
    with FaultProxy(s3_endpoint, stall_seconds=3 * float(TIMEOUT)) as p:
        yield p
    os.environ.pop("CGI2REAL_S3_TIMEOUT")


# --- Markers: what a test needs (pyproject.toml registers them; `pytest -m "not ray"` leaves Ray out) ---

NEEDS = {
    "ray": {"ray_cluster"},
    "s3": {"s3_endpoint", "s3_client", "bucket", "photos", "proxy", "s3_request_log"},
}


def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = set(item.fixturenames)
        for marker, needs in NEEDS.items():
            if fixtures & needs:
                item.add_marker(marker)
        if "cluster" in item.path.parts:  # several Ray nodes, a `ray start` head, cluster.yaml
            item.add_marker("cluster")
            item.add_marker("ray")

