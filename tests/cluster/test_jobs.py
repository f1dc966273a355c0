"""Ray Jobs against a real head started with `ray start` on 127.0.0.1: `cgi2real submit`, S3 in between."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from cgi2real.storage.locations import s3_filesystem
from tests.conftest import S3_ENV, _free_port, invoke, upload_folder
from tests.labeling import make_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    """A real single-node Ray cluster (head with dashboard and Jobs API) on free loopback ports.

    `ray start --block` in a session of its own: its processes are stopped by signalling that
    session, not by `ray stop`, which would stop every Ray instance on the machine (those of tests
    running in parallel too).
    """
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}  # jobs run `python`
    env.pop("RAY_ADDRESS", None)
    port, dashboard, agent, client = _free_port(), _free_port(), _free_port(), _free_port()
    head = subprocess.Popen(
        # the job agent's port too: its default (52365) may be taken by another test process's Ray
        [ray, "start", "--head", "--block", "--port", str(port), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
         "--num-cpus", "4", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:  # the Jobs API comes up a while after the head starts
        assert head.poll() is None, "ray start failed"
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # 401 without a token: it is up
            break
        except OSError:
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(0.5)
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # the head and everything it started: they share its session
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:  # its orderly shutdown takes half a minute: nothing of it is checked here
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    forget_head(port)


def forget_head(port: int) -> None:
    """Delete the address file (/tmp/ray/ray_current_cluster) that `ray start` wrote, unless another
    head has written its own since: a killed head leaves it behind. Ray's State API connects to the
    address it names even from a local instance, so every later Ray Train run's placement-group
    cleaner would wait 40 s on a dead GCS, and each `fit()` return about 12 s late."""
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    with contextlib.suppress(OSError):
        with open(path) as f:
            if f.read().strip().endswith(f":{port}"):
                os.remove(path)


def submit(*args):
    return invoke("submit", *args, code=None)


def test_label_job_through_the_jobs_api_against_s3(ray_head, image_root, s3_client, bucket, s3_endpoint, tmp_path, monkeypatch):
    images = image_root(4, 96)
    package = make_package(str(tmp_path / "pkg"), images)
    upload_folder(s3_client, images, bucket, "photos")
    upload_folder(s3_client, package, bucket, "models/m1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # reaches the job through its env_vars
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)

    result = submit("--address", ray_head, "--pass-aws-credentials", "label", f"s3://{bucket}/photos", "--model", f"s3://{bucket}/models/m1", "--out", f"s3://{bucket}/labels")
    assert result.exit_code == 0, result.output
    assert "submitted raysubmit_" in result.output and ": SUCCEEDED" in result.output
    assert "12 images under s3://" in result.output  # the job's own log, streamed back
    table = pq.read_table(f"{bucket}/labels", filesystem=s3_filesystem(s3_endpoint))
    assert sorted(table["path"].to_pylist()) == sorted(f"s3://{bucket}/photos/{os.path.relpath(os.path.join(d, f), images)}" for d, _, fs in os.walk(images) for f in fs if f.endswith(".jpg"))


def test_a_failing_job_exits_1_with_its_error_in_the_log(ray_head, tmp_path):
    result = submit("--address", ray_head, "label", str(tmp_path / "nothing-here"), "--model", str(tmp_path), "--out", str(tmp_path / "t"))
    assert result.exit_code == 1, result.output
    assert "error: source" in result.output and "does not exist" in result.output and ": FAILED" in result.output


def test_submit_refuses_what_it_cannot_run(ray_head):
    assert "COMMAND 'evaluate': expected one of train, adapt, label, synth" in submit("--address", ray_head, "evaluate").stderr
    incomplete = submit("--address", ray_head, "label", "x")  # checked here, never submitted
    assert incomplete.exit_code == 2 and "Missing option '--model'" in incomplete.stderr
    unreachable = submit("--address", "http://127.0.0.1:9", "label", "x", "--model", "m", "--out", "o")
    assert unreachable.exit_code == 2 and "cannot submit to the Ray Jobs API" in unreachable.stderr
