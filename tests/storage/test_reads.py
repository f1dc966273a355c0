"""Reading one file: one GET on S3, retries of transient faults, and the reason a read failed."""

import os

import pytest

from cgi2real.imaging.presets import EvalPreset
from cgi2real.pipelines.batches import read_image
from cgi2real.storage.locations import locate, s3_filesystem
from cgi2real.storage.reads import READ_ATTEMPTS, read_file
from tests.conftest import s3_requests


def test_a_file_on_s3_is_read_in_one_get(s3_endpoint, s3_client, s3_request_log, bucket):
    """Not in 256 KB ranged GETs: a 5 MB photo took 21 requests that way, a 95 MB package 38 s."""
    data = os.urandom(5 * 2**20)
    s3_client.put_object(Bucket=bucket, Key="photos/big.jpg", Body=data)
    with s3_requests(s3_request_log) as requests:
        assert read_file(s3_filesystem(s3_endpoint), f"{bucket}/photos/big.jpg") == (data, None)
    assert requests["GET"] == 1 and requests["HEAD"] <= 1, requests
    with s3_requests(s3_request_log) as requests:
        assert locate(f"s3://{bucket}/photos/big.jpg", s3_endpoint).read_bytes() == data
    assert requests["GET"] == 1 and requests["HEAD"] <= 1, requests
    assert read_file(s3_filesystem(s3_endpoint), f"{bucket}/photos/gone.jpg") == (None, "file not found")


@pytest.mark.slow
def test_a_read_retries_transient_faults_and_gives_up_as_unavailable(proxy, photos):
    fs = s3_filesystem(proxy.endpoint)
    key = "scale-photos/" + photos[0]
    proxy.add(key, "slowdown", times=4)  # more than the S3 client's own 3 tries: our retry is needed
    data, error = read_file(fs, key)
    assert error is None and data[:2] == b"\xff\xd8" and proxy.hits[key] == 4
    proxy.add(key, "reset")  # for good
    data, error = read_file(fs, key)
    assert data is None and error.startswith("unavailable: ") and "Connection reset" in error
    assert proxy.hits[key] >= 4 + READ_ATTEMPTS
    proxy.clear()


def test_read_errors_name_the_reason(tmp_path):
    preset = EvalPreset(96)
    assert read_image(locate("/").fs, str(tmp_path / "gone.jpg"), preset) == (None, "file not found")
    assert read_image(locate("/").fs, str(tmp_path / "x.jpg"), preset, size=2**40)[1].startswith("too large: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_permission_denied(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    assert read_image(locate("/").fs, str(path), EvalPreset(96)) == (None, "permission denied")
