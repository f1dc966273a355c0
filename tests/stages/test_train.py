"""Training end to end on a local Ray instance: CLI, packages, S3, evaluation, resume."""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from cgi2real.core.config import TrainConfig
from cgi2real.formats.checkpoints import SPLIT_JSON
from cgi2real.formats.class_folders import PASTE_BATCH, scan_labeled_dataset
from cgi2real.model.networks import load_model_package
from cgi2real.model.training import checkpoint_score
from cgi2real.pipelines.datasets import training_datasets, training_rows
from cgi2real.plans.train import prepare_inputs
from cgi2real.stages.train import checkpoint_config, pick_best
from tests.conftest import invoke, kill_after_checkpoint, upload_folder

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SMALL = ["--weights", "none", "--image-size", "80", "--batch-size", "8"]
TRAINED_BUCKET = "trained"


@pytest.fixture(scope="module")
def trained(ray_cluster, image_root, tmp_path_factory, s3_client, s3_endpoint):
    """Two workers, 1 head + 1 fine-tune epoch, on two roots: 24 generated images per class in a
    folder and 6 (drawn x0.5) on S3, checkpointed to S3, the package written to a folder.

    JPEG bytes go to the workers, which decode and augment them (--decode device, on their CPUs
    here), with the default recipe: masks, random backgrounds, pasting. The other training tests
    take the CPU path.
    """
    tmp = tmp_path_factory.mktemp("trained")
    s3_client.create_bucket(Bucket=TRAINED_BUCKET)
    upload_folder(s3_client, image_root(6, 96, seed=3), TRAINED_BUCKET, "small")
    out = invoke("train", image_root(24, 96), f"s3://{TRAINED_BUCKET}/small", "--repeats", "1,0.5", "--out", tmp / "pkg", *SMALL,
                 "--epochs-head", 1, "--epochs-finetune", 1, "--unfreeze-from", "Mixed_7a", "--workers", 2, "--storage", f"s3://{TRAINED_BUCKET}/runs", "--name", "two-workers",
                 "--decode", "device", "--s3-endpoint", s3_endpoint).output
    return tmp, out


def test_two_workers_write_a_valid_package(trained, s3_client):
    tmp, output = trained
    package = load_model_package(str(tmp / "pkg"))
    assert package.classes == ["both", "horse", "human"] and package.image_size == 80
    training = package.config["training"]
    assert [e["stage"] for e in training["epochs"]] == ["head", "finetune"]
    head, finetune = training["epochs"]
    assert head["trainable_params"] < finetune["trainable_params"]
    for epoch in training["epochs"]:
        assert epoch["train_loss"] > 0 and 0 <= epoch["val_acc"] <= 1 and epoch["img_per_s"] > 0
    # per root, 20% of each class held out: 24 -> 19 + 5 and 6 -> 5 + 1
    counts = training["class_counts"]
    assert counts["train"] == {"both": 24, "horse": 24, "human": 24} and counts["val"] == {"both": 6, "horse": 6, "human": 6}
    assert [(r["weight"], r["train"]["horse"], r["val"]["horse"], r["masks"]) for r in counts["roots"]] == [(1.0, 19, 5, 57), (0.5, 5, 1, 15)]
    assert "drawn x0.5 per epoch" in output
    assert training["workers"] == 2 and training["best_epoch"] in (1, 2) and training["decode"] == "device"
    assert all(e["bad_images"] == 0 for e in training["epochs"])
    assert "model package: " in output and str(tmp / "pkg") in output
    assert counts["roots"][1]["uri"] == f"s3://{TRAINED_BUCKET}/small"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=TRAINED_BUCKET, Prefix="runs/two-workers/")["Contents"]]
    assert any(k.endswith("epoch_0002/model.safetensors") for k in keys) and any(k.endswith("epoch_0002/split.json") for k in keys)


def test_evaluate_and_info_read_the_package(trained, image_root):
    tmp, _ = trained
    output = invoke("evaluate", "--model", tmp / "pkg", "--data", image_root(24, 96), "--data", image_root(6, 96, seed=5), "--out", tmp / "report",
                    "--abstain-below", 0.5).output
    report = json.loads((tmp / "report" / "report.json").read_text())
    assert len(report["datasets"]) == 2
    for name, result in report["datasets"].items():
        assert name in output
        assert sum(map(sum, result["confusion"])) == result["n"]
        assert set(result["per_class"]) == {"both", "horse", "human"}
        assert (tmp / "report" / f"confusion_{name.replace('/', '_')}.png").stat().st_size > 1000
        assert (tmp / "report" / f"reliability_{name.replace('/', '_')}.png").stat().st_size > 1000
        assert 0 <= result["ece"] <= 1 and sum(b["n"] for b in result["calibration"]) == result["n"]
        covered = result["abstain"]["covered"]
        assert result["abstain"]["coverage"] == pytest.approx(covered / result["n"]) and (covered == 0) == (result["abstain"]["accuracy"] is None)
    assert "ECE" in output and "coverage" in output
    assert report["datasets"][next(iter(report["datasets"]))]["n"] == 72
    info = invoke("info", tmp / "pkg").output
    assert "classes      both, horse, human" in info and "finetune" in info
    assert "x0.5: both 5, horse 5, human 5, 15 masks" in info and "recipe     augment real" in info


def test_resume_after_a_kill_continues_from_the_checkpoint_with_its_split(ray_cluster, image_root, tmp_path):
    """Kill a real training process after its first checkpoint; the rerun (in this process, on the
    module's Ray instance) picks up from there, on the same split."""
    data = tmp_path / "data"
    shutil.copytree(image_root(24, 96), data)
    storage, out = tmp_path / "runs", tmp_path / "pkg"
    command = [sys.executable, "-m", "cgi2real.cli", "train", str(data), "--out", str(out), *SMALL,
               "--epochs-head", "1", "--epochs-finetune", "1", "--unfreeze-from", "Mixed_7a",
               "--storage", str(storage), "--name", "resume-me"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first_output = kill_after_checkpoint(command, storage / "resume-me", env)
    assert not out.exists(), "the first run finished before it was killed"
    assert "epoch 1/2" in first_output
    split = json.loads((storage / "resume-me" / "epoch_0001" / SPLIT_JSON).read_text())["roots"][0]

    shutil.copy(data / "horse" / "horse_000000.jpg", data / "horse" / "horse_new.jpg")  # a file added between the runs
    log = invoke(*command[3:]).output
    assert "resuming after epoch 1/2" in log
    assert "resuming: kept the run's validation split (15 images)" in log and "1 file(s) added since the run started go to training only" in log
    assert "epoch 1/2" not in log.replace("resuming after epoch 1/2", "")
    assert "epoch 2/2" in log
    package = load_model_package(str(out)).config["training"]
    assert [e["epoch"] for e in package["epochs"]] == [1, 2]
    assert [e["stage"] for e in package["epochs"]] == ["head", "finetune"]
    assert package["class_counts"]["train"]["horse"] == 20 and package["class_counts"]["val"]["horse"] == 5
    final = json.loads((storage / "resume-me" / "epoch_0002" / SPLIT_JSON).read_text())["roots"][0]
    assert final["val"] == split["val"] and "horse/horse_new.jpg" in final["train"]

    # a finished run whose package cannot be written says how to export it elsewhere, which costs no training
    (tmp_path / "a_file").write_text("x")
    blocked = [*command[3:command.index("--out")], "--out", str(tmp_path / "a_file" / "pkg"), *command[command.index("--out") + 2:]]
    failed = invoke(*blocked, code=1)
    assert f"the finished run is kept: rerun with --storage {storage} --name resume-me and another --out to export it" in failed.output
    exported = invoke(*blocked[:blocked.index("--out")], "--out", tmp_path / "pkg2", *blocked[blocked.index("--out") + 2:]).output
    assert "finished all 2 epochs already" in exported and load_model_package(str(tmp_path / "pkg2")).config["training"]["best_epoch"] in (1, 2)

    # both refusals come before Ray starts: in this process, without a second interpreter's start-up
    changed = invoke(*command[3:], "--seed", "7", code=None)
    assert changed.exit_code == 2 and "started with other settings (--seed)" in changed.output
    os.remove(data / split["val"][0])
    gone = invoke(*command[3:], code=None)
    assert gone.exit_code == 2 and f"1 validation file(s) of the run are gone from {data} (e.g. {split['val'][0]})" in gone.output


def test_gpu_requested_without_one_fails_with_one_line(ray_cluster, image_root, tmp_path):
    if ray_cluster.cluster_resources().get("GPU", 0):
        pytest.skip("this machine has a GPU")
    result = invoke("train", image_root(24, 96), "--out", tmp_path / "p", *SMALL, "--gpu", code=None)
    assert result.exit_code == 2 and result.stderr.startswith("error: --gpu needs 1 GPU(s) here (one per model worker); this machine has 0")


def test_demo_runs_end_to_end_and_a_rerun_reuses_its_work(ray_cluster, tmp_path):
    args = ("demo", "--workdir", tmp_path, "--per-class", 16, "--epochs", 1, "--batch-size", 8)
    output = invoke(*args).output
    assert "test accuracy" in output and (tmp_path / "model" / "model.safetensors").exists()
    assert "epoch 1/1 [" in output  # the worker's line, through the driver's progress queue
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert next(iter(report["datasets"].values()))["n"] == 30  # 10 fresh test images per class
    table = pq.read_table(tmp_path / "labels")
    assert table.num_rows == 30 and table["error"].null_count == 30  # 10 unlabeled images per class, all labeled
    assert "label table" in output and str(tmp_path / "labels") in output
    page = (tmp_path / "review" / "index.html").read_text()
    assert f"review page:   {tmp_path / 'review' / 'index.html'}" in output and page.count("<figure>") >= 30
    assert json.loads((tmp_path / "data" / "train" / "_synth.json").read_text())["scenes"] == "photo"
    package = json.loads((tmp_path / "model" / "config.json").read_text())
    assert package["arch"] == "efficientnet_lite0" and package["training"]["config"]["weights"] == "imagenet"  # pretrained, offline
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    again = invoke(*args).output
    assert "rendering" not in again and again.count("images already in") == 3  # the images were kept
    assert "30 already in" in again  # and labeled
    # nothing retrained, and no Ray Train started to find that out: the package is written again as it was
    assert "finished all 1 epochs already" in again and "resuming after" not in again and "epoch 1/1 [" not in again
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights
    assert json.loads((tmp_path / "model" / "config.json").read_text())["training"] == package["training"]


def test_training_rows_meet_new_batch_mates_every_epoch(ray_cluster, image_root):
    images = scan_labeled_dataset(image_root(24, 96), ("both", "horse", "human"))
    rows = training_rows([images], [1.0])

    def mates() -> dict[str, set]:
        found = {}
        for batch in rows.iter_batches(batch_size=PASTE_BATCH):
            for path in batch["path"]:
                found[path] = set(batch["path"]) - {path}
        return found

    first, second = mates(), mates()
    assert sorted(first) == sorted(second) == sorted(images.paths)  # every image once per epoch
    overlap = np.mean([len(first[p] & second[p]) / max(len(first[p] | second[p]), 1) for p in first])
    assert overlap < 0.4, f"an image kept {overlap:.0%} of its batch-mates"  # shuffled once, it kept most of them


def test_the_validation_set_is_streamed_not_held(ray_cluster, image_root, tmp_path):
    from ray.data.dataset import MaterializedDataset

    cfg = TrainConfig(data=(image_root(24, 96),), out=str(tmp_path / "pkg"), weights="none", image_size=80)
    datasets = training_datasets(prepare_inputs(cfg), cfg)
    assert not any(isinstance(ds, MaterializedDataset) for ds in datasets.values())


def _report_scripted_epochs(config: dict) -> None:
    import ray.train

    for epoch, (acc, loss) in enumerate(config["metrics"], start=1):
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            metrics = {"epoch": epoch, "val_acc": acc, "val_loss": loss, "checkpoint_score": checkpoint_score(acc, loss)}
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")


def test_ties_in_accuracy_go_to_the_lower_loss_among_the_checkpoints_kept(ray_cluster, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _report_scripted_epochs,
        train_loop_config={"metrics": [(0.5, 0.7), (0.5, 0.9), (0.5, 0.8), (0.4, 0.1)]},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name="scores", storage_path=str(tmp_path), checkpoint_config=checkpoint_config()),
    )
    best, metrics = pick_best(trainer.fit())
    assert metrics["epoch"] == 1 and best.path.endswith("epoch_0001")


def test_training_stops_when_too_many_images_cannot_be_read(ray_cluster, image_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_root(8, 96), data)
    for path in sorted((data / "horse").glob("*.jpg"))[:3]:  # 3 of 24 images: 1 of the 18 training images, 2 of the 6 held out
        path.write_bytes(b"not a picture")
    # batches of 6 take all 18 training images: with batches of 4, the last 2 are dropped, and
    # when the unreadable one was among them only the validation check saw any
    result = invoke("train", data, "--out", tmp_path / "pkg", *SMALL, "--batch-size", 6, "--epochs-head", 1, "--epochs-finetune", 0,
                    "--storage", tmp_path / "runs", code=1)
    assert "1 of 18 training images of epoch 1 could not be read or decoded (more than 5%, --max-unreadable)" in result.stderr, result.stderr
    assert not (tmp_path / "pkg").exists()


def test_training_that_diverges_stops_in_one_line_without_a_package(ray_cluster, image_root, tmp_path):
    # a rate of 1e30 makes the weights +-1e30 after the first step: the loss overflows to NaN
    result = invoke("train", image_root(8, 96), "--out", tmp_path / "pkg", *SMALL, "--batch-size", 6, "--epochs-head", 0, "--epochs-finetune", 1,
                    "--lr-finetune", "1e30", "--storage", tmp_path / "runs", code=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # the rest: the module Ray's worker logs
    assert len(errors) == 1 and "training diverged in epoch 1: the training loss is nan, so this epoch's weights are not kept" in errors[0], result.stderr
    assert not (tmp_path / "pkg").exists()
