"""CLI error paths: one line on stderr, exit code 2, no traceback, nothing started."""

import os

import pytest
from typer.testing import CliRunner

from cgi2real.cli import app

COMMANDS = ["train", "evaluate", "info", "demo"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_on_every_command(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_missing_dataset(tmp_path):
    assert_one_line_error(run("train", tmp_path / "nope", "--out", tmp_path / "pkg", "--weights", "none"), "does not exist")


def test_train_empty_class(image_root, tmp_path):
    root = tmp_path / "data"
    for name in ("horse", "human", "both"):
        os.makedirs(root / name)
    (root / "horse" / "a.jpg").write_bytes(b"x")
    (root / "human" / "a.jpg").write_bytes(b"x")
    assert_one_line_error(run("train", root, "--out", tmp_path / "pkg", "--weights", "none"), "no images of class both", "--classes")


def test_train_unknown_class_folder(tmp_path):
    for name in ("horse", "human", "both", "zebra"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "a.jpg").write_bytes(b"x")
    assert_one_line_error(run("train", tmp_path, "--out", tmp_path / "pkg", "--weights", "none"), "zebra")


def test_train_image_size_too_small(image_root, tmp_path):
    assert_one_line_error(run("train", image_root(), "--out", tmp_path / "pkg", "--image-size", 64), "at least 75")


def test_train_bad_classes_and_unknown_block(image_root, tmp_path):
    assert_one_line_error(run("train", image_root(), "--out", tmp_path / "p", "--classes", "horse"), "at least two")
    assert_one_line_error(run("train", image_root(), "--out", tmp_path / "p", "--weights", "none", "--unfreeze-from", "Mixed_9"), "Mixed_9", "Mixed_6a")


def test_train_unreadable_package_as_weights(image_root, tmp_path):
    os.makedirs(tmp_path / "notapkg")
    assert_one_line_error(run("train", image_root(), "--out", tmp_path / "p", "--weights", tmp_path / "notapkg"), "not a model package")


def test_train_too_few_images_for_the_batch(image_root, tmp_path):
    assert_one_line_error(run("train", image_root(), "--out", tmp_path / "p", "--weights", "none", "--batch-size", 64), "fewer than --batch-size 64")


def test_evaluate_and_info_refuse_a_non_package(image_root, tmp_path):
    assert_one_line_error(run("evaluate", "--model", tmp_path, "--data", image_root()), "not a model package")
    assert_one_line_error(run("info", tmp_path / "missing"), "not a model package", "no such folder")


def test_bad_s3_endpoint_fails_fast_with_one_line(tmp_path):
    result = run("train", "s3://bucket/data", "--out", tmp_path / "p", "--weights", "none", "--s3-endpoint", "http://127.0.0.1:9")
    assert_one_line_error(result, "s3://bucket/data")
    assert_one_line_error(run("info", "s3://b/pkg", "--s3-endpoint", "ftp://x"), "invalid S3 endpoint")


def test_missing_s3_bucket(s3_endpoint, tmp_path):
    assert_one_line_error(run("train", "s3://no-such-bucket/data", "--out", tmp_path / "p", "--weights", "none", "--s3-endpoint", s3_endpoint), "does not exist")
