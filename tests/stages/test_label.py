"""Batch labeling: the model actor and table writer alone, then whole runs on Ray (local and S3)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cgi2real.formats.package import read_model_package
from cgi2real.pipelines.labeler import Labeler
from cgi2real.storage.locations import s3_filesystem
from tests.conftest import invoke, upload_folder
from tests.labeling import batch_of, direct_probabilities, image_files, make_package

CLASSES = ["both", "horse", "human"]


@pytest.fixture(scope="module")
def expected(package, source):
    """Direct single-image predictions of every input file, keyed by path."""
    return direct_probabilities(package, image_files(source[0]))


# --- Without Ray -----------------------------------------------------------------------------------


def test_labeler_equals_single_image_predictions_and_passes_errors_through(package, source, expected):
    folder, zoo = source
    paths = image_files(folder)
    config, weights = read_model_package(package)
    output = Labeler(config, weights)(batch_of(paths))
    for path, probs, error in zip(output["path"], output["probs"], output["error"]):
        if expected[path] is None:
            assert error and np.isnan(probs).all()
        else:
            assert error == "" and probs.argmax() == expected[path].argmax()
            np.testing.assert_allclose(probs, expected[path], atol=5e-4)  # batched float32 sums differ from single-image ones by ~1e-4
    assert len({int(p.argmax()) for p in output["probs"] if not np.isnan(p).any()}) > 1, "the test package should disagree with itself"


# --- On Ray ----------------------------------------------------------------------------------------


def assert_table_matches(table: pa.Table, expected: dict, uri_of, zoo: dict):
    """One row per input; error rows exactly for the broken files; labels equal direct predictions."""
    rows = {row["path"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows == len(expected)
    assert set(rows) == {uri_of(p) for p in expected}
    for path, probs in expected.items():
        row = rows[uri_of(path)]
        reason = zoo.get(os.path.basename(path))
        if reason is None and probs is not None:
            assert row["error"] is None and row["label"] == CLASSES[int(probs.argmax())], path
            np.testing.assert_allclose([row[f"p_{c}"] for c in CLASSES], probs, atol=5e-4)  # float32: batch-mates change the sums
            assert row["confidence"] == pytest.approx(float(probs.max()), abs=5e-4)
        else:
            assert reason is not None, f"{path} should have been labeled"
            assert row["label"] is None and row["p_horse"] is None and reason in row["error"], (path, row["error"])
    name_of = {os.path.basename(p): uri_of(p) for p in expected}
    assert rows[name_of["exif_rotated.png"]]["p_both"] == pytest.approx(rows[name_of["upright.png"]]["p_both"], abs=1e-5)


@pytest.mark.slow
def test_label_a_local_folder_then_rerun_adds_nothing(ray_cluster, package, source, expected, tmp_path):
    import duckdb
    import pandas as pd

    folder, zoo = source
    out = tmp_path / "labels"
    output = invoke("label", folder, "--model", package, "--out", out, "--batch-size", 8).output
    table = pq.read_table(out)
    assert_table_matches(table, expected, lambda p: p, zoo)
    broken = sum(1 for r in zoo.values() if r)
    assert f"errors    {broken} (" in output and "49 other files skipped" in output  # 48 figure masks, 1 text file
    assert f"table     {out}" in output

    meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata[b"cgi2real"].decode()
    config, _ = read_model_package(package)
    assert config["weights_sha256"][:16] in meta and '"classes": ["both", "horse", "human"]' in meta
    assert set(table["model"].to_pylist()) == {config["weights_sha256"][:16]}
    assert len(pd.read_parquet(out)) == len(expected)
    n, distinct, errors = duckdb.sql(f"select count(*), count(distinct path), count(error) from read_parquet('{out}/*.parquet')").fetchall()[0]
    assert (n, distinct, errors) == (len(expected), len(expected), broken)

    files_before = sorted(os.listdir(out))
    again = invoke("label", folder, "--model", package, "--out", out).output
    assert f"{len(expected)} already in" in again and sorted(os.listdir(out)) == files_before

    summary = invoke("summary", out).output
    assert f"{len(expected)} rows" in summary and "truncated 1" in summary and config["weights_sha256"][:16] in summary


@pytest.mark.slow
def test_decode_device_labels_what_the_device_preset_shows(ray_cluster, package, source, tmp_path):
    """--decode device through Ray: JPEG bytes to the model actor, decoded and framed there (CPU
    tensors here), other files decoded by the reading tasks; the zoo's error rows as ever."""
    folder, zoo = source
    expected = direct_probabilities(package, image_files(folder), decode="device")
    out = tmp_path / "labels"
    output = invoke("label", folder, "--model", package, "--out", out, "--decode", "device", "--batch-size", 16).output
    assert "decoding on the model device" in output
    assert_table_matches(pq.read_table(out), expected, lambda p: p, zoo)


def test_an_unknown_decode_mode_is_refused_before_anything_runs(package, source, tmp_path):
    result = invoke("label", source[0], "--model", package, "--out", tmp_path / "labels", "--decode", "gpu", code=2)
    assert "--decode 'gpu': expected one of cpu, device" in result.stderr and not (tmp_path / "labels").exists()


@pytest.mark.slow
def test_label_an_s3_prefix_with_an_s3_package(ray_cluster, package, source, expected, s3_client, bucket, s3_endpoint):
    folder, zoo = source
    upload_folder(s3_client, folder, bucket, "photos")
    upload_folder(s3_client, package, bucket, "models/m1")
    invoke("label", f"s3://{bucket}/photos", "--model", f"s3://{bucket}/models/m1", "--out", f"s3://{bucket}/labels", "--s3-endpoint", s3_endpoint, "--batch-size", 16)
    table = pq.read_table(f"{bucket}/labels", filesystem=s3_filesystem(s3_endpoint))
    assert_table_matches(table, expected, lambda p: f"s3://{bucket}/photos/{os.path.relpath(p, folder)}", zoo)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="labels/")["Contents"]]
    files = [k for k in keys if not k.endswith("/")]  # pyarrow keeps a folder marker
    assert files and all(k.startswith("labels/part-") for k in files)
    assert "truncated 1" in invoke("summary", f"s3://{bucket}/labels", "--s3-endpoint", s3_endpoint).output


@pytest.mark.slow
def test_abstain_below_leaves_low_confidence_images_unlabeled(ray_cluster, package, source, expected, tmp_path):
    folder, zoo = source
    confidences = sorted(float(p.max()) for name, p in expected.items() if p is not None and not zoo.get(os.path.basename(name)))
    # a threshold in the widest gap between two confidences in the middle third: `cut` images abstain
    cut = max(range(len(confidences) // 3, 2 * len(confidences) // 3), key=lambda i: confidences[i] - confidences[i - 1])
    threshold = round((confidences[cut - 1] + confidences[cut]) / 2, 6)
    out = tmp_path / "labels"
    invoke("label", folder, "--model", package, "--out", out, "--abstain-below", threshold)
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    low = [r for r in rows.values() if r["error"] == "low confidence"]
    assert len(low) == cut and all(r["label"] is None and r["confidence"] < threshold for r in low)
    labeled = [r for r in rows.values() if r["label"] is not None]
    assert len(labeled) == len(confidences) - len(low) and all(r["confidence"] >= threshold for r in labeled)
    assert len(rows) == len(expected)
    assert "low confidence " + str(len(low)) in invoke("summary", out).output
    refused = invoke("label", folder, "--model", package, "--out", out, "--abstain-below", 0.9, code=2)
    assert f"--abstain-below {threshold}" in refused.stderr
    assert "--abstain-below 1.5: expected a number in (0, 1]" in invoke("label", folder, "--model", package, "--out", tmp_path / "x", "--abstain-below", 1.5, code=2).stderr


@pytest.mark.slow
def test_another_model_is_refused_and_overwrite_relabels(ray_cluster, package, image_root, tmp_path):
    images, out = image_root(4, 96), tmp_path / "labels"
    other = make_package(str(tmp_path / "other"), images, seed=1)
    invoke("label", images, "--model", package, "--out", out)
    refused = invoke("label", images, "--model", other, "--out", out, code=2)
    assert "holds labels from model" in refused.stderr and "--overwrite" in refused.stderr
    invoke("label", images, "--model", other, "--out", out, "--overwrite")
    table = pq.read_table(out)
    other_id = read_model_package(other)[0]["weights_sha256"][:16]
    assert table.num_rows == 12 and set(table["model"].to_pylist()) == {other_id}


@pytest.mark.slow  # 8-14 s: kept out of the quick suite, run by CI
def test_a_package_whose_weights_were_changed_or_do_not_fit_is_refused_in_one_line(ray_cluster, package, image_root, tmp_path):
    """Changed weights are refused by the driver (their SHA-256); weights that do not fit the
    network are refused by the model actors as they build it, and the run says why in one line,
    without Ray's tracebacks, before it writes any row."""
    import json
    import shutil

    images = image_root(4, 96)
    tampered, edited = tmp_path / "tampered", tmp_path / "edited"
    shutil.copytree(package, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    shutil.copytree(package, edited)  # a class added by hand to config.json: the weights' hash still matches
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "classes": [*config["classes"], "zebra"]}))
    for bad, reason in [(tampered, "does not match the SHA-256"), (edited, "fc.weight")]:
        out = tmp_path / f"labels-{bad.name}"
        refused = invoke("label", images, "--model", bad, "--out", out, code=2)
        # Ours, that is: Ray forwards its own processes' log lines ("(raylet) ...") to any driver's stderr.
        lines = [line for line in refused.stderr.strip().splitlines() if "(raylet)" not in line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr
        assert not out.exists() or not list(out.glob("*.parquet"))


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_repeating_a_row(ray_cluster, package, source, expected, tmp_path):
    """Kill a real labeling process after its first committed file; the rerun (in this process, on
    the module's Ray instance: a second start-up proves nothing more) completes the table."""
    folder, zoo = source
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "cgi2real.cli", "label", folder, "--model", package, "--out", str(out), "--batch-size", "4", "--rows-per-file", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "no file committed within 120 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its local Ray, mid-run
    shown = first.communicate()[0]  # off a terminal (a pipe): our lines only, none of Ray Data's
    assert "CPU actor" in shown and "Progress bars" not in shown and "Dataset" not in shown and " INFO " not in shown, shown
    partial = pq.read_table(out).num_rows
    assert 0 < partial < len(expected), "the first run finished before it was killed"

    second = invoke(*command[3:])
    assert f"{partial} already in" in second.stdout
    assert_table_matches(pq.read_table(out), expected, lambda p: p, zoo)
