"""Training: two-stage transfer learning on Ray Train, checkpoints, resume, the final package.

The maths are plain torch (`model.training`: loss, `train_one_epoch`, `evaluate`); the inputs are
`pipelines.datasets`; the Ray Train scaffold is `runtime.trainer`. Here: the worker's loop over
epochs and stages, and the driver (`run`): check, resume, start Ray, fit, export the best epoch.
"""

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from cgi2real.core.archs import get_arch
from cgi2real.core.classes import composite_pairs
from cgi2real.core.config import TrainConfig, from_dict
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.checkpoints import SPLIT_JSON, TRAIN_STATE_JSON, checkpoint_file
from cgi2real.formats.package import WEIGHTS_FILE
from cgi2real.imaging.gpu_eval import DevicePreset
from cgi2real.imaging.gpu_train import DeviceTrainPreset
from cgi2real.imaging.presets import EvalPreset
from cgi2real.model.networks import initial_model, package_config, read_starting_weights, save_model_package, set_trainable
from cgi2real.model.training import (
    EPOCH_ERRORS,
    EpochStats,
    MaskedCrossEntropy,
    check_epoch,
    epoch_metrics,
    evaluate,
    format_epoch,
    make_optimizer,
    train_one_epoch,
)
from cgi2real.pipelines.datasets import train_preset, training_datasets
from cgi2real.plans.train import TrainPlan, plan
from cgi2real.runtime.cluster import check_local_paths, start_ray, use_gpus
from cgi2real.runtime.progress import RemoteProgress, counted
from cgi2real.runtime.trainer import Worker, all_reduce_max, all_reduce_sum, fit
from cgi2real.storage.locations import locate

# --- The Ray Train worker ----------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker.

    config = {"cfg": asdict(TrainConfig), "class_weights": [...], "split": the held-out split (or None),
    "start": (package config or None, ObjectRef of the starting safetensors bytes, or None),
    "progress": a progress.ProgressReporter (or None), "per_epoch": training images per epoch}.
    """
    import ray
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainConfig, config["cfg"])
    worker = Worker.start(config, cfg.seed)
    device, progress = worker.device, worker.progress

    start_config, start_ref = config["start"]
    start_bytes = ray.get(start_ref) if start_ref is not None else None  # read once by the driver, shared by every worker
    model = initial_model(cfg.weights, list(cfg.classes), cfg.image_size, start_bytes, start_config, cfg.arch)
    arch = get_arch(cfg.arch)
    weights = torch.tensor(config["class_weights"]) if cfg.class_weighting else None
    loss_fn = MaskedCrossEntropy(weights, cfg.label_smoothing).to(device)

    start_epoch, history, resumed_optimizer = 0, [], None
    if resumed := worker.resumed():
        model_state, opt_state, state = resumed
        model.load_state_dict(model_state)
        start_epoch, history = state["epoch"] + 1, state["history"]
        resumed_optimizer = (state["stage"], opt_state, state["scheduler"])
        worker.tell(f"resuming after epoch {start_epoch}/{cfg.epochs} from its checkpoint")

    worker.place(model)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    train_batches_of, val_batches_of = worker_batches(cfg, config.get("decode", "cpu"), device)
    if progress:
        progress.restart(start_epoch * config["per_epoch"])
    stage = None
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.stage(epoch) != stage:  # a new stage: refreeze, rewrap for DDP, new optimizer
            stage = cfg.stage(epoch)
            trainable = set_trainable(model, stage, cfg.unfreeze_from)
            parallel_model = ray.train.torch.prepare_model(model)
            optimizer, scheduler = make_optimizer(model, cfg, stage)
            if resumed_optimizer and resumed_optimizer[0] == stage:
                optimizer.load_state_dict(resumed_optimizer[1])
                scheduler.load_state_dict(resumed_optimizer[2])
            resumed_optimizer = None
        lr = optimizer.param_groups[0]["lr"]
        # drop_last: a 1-image batch breaks BatchNorm; shards are equal, so all workers drop alike
        train_batches = train_batches_of(train_shard, drop_last=True, local_shuffle_buffer_size=2 * cfg.batch_size)
        if progress:
            progress.note(f"epoch {epoch + 1} of {cfg.epochs}")
            train_batches = counted(train_batches, progress, worker.world_size)
        train_stats = reduce_stats(train_one_epoch(parallel_model, loss_fn, optimizer, train_batches, device, arch.mean, arch.std, cfg.freeze_bn), device)
        check_epoch(train_stats, "training", epoch + 1, cfg.max_unreadable)
        scheduler.step()
        val_stats = reduce_stats(evaluate(model, loss_fn, val_batches_of(val_shard), device, arch.mean, arch.std), device)
        check_epoch(val_stats, "validation", epoch + 1, cfg.max_unreadable)
        metrics = epoch_metrics(epoch, cfg.epochs, stage, lr, trainable, train_stats, val_stats)
        history.append(metrics)
        state = {
            "epoch": epoch, "stage": stage, "history": history, "config": config["cfg"],
            "package": package_config(model, list(cfg.classes), cfg.image_size, cfg.geometry),
            "device": device.type, "decode": config["decode"],  # what a finished run's package records
        }
        split = {SPLIT_JSON: config["split"]} if config["split"] is not None else None
        worker.report(epoch, metrics, model, optimizer, scheduler, state, format_epoch(metrics), split)


def reduce_stats(stats: EpochStats, device: torch.device) -> EpochStats:
    """Sum stats over data-parallel workers (slowest worker's time); the same stats for one process."""
    sums = all_reduce_sum(torch.tensor([stats.loss_sum, stats.n, stats.bad, *stats.confusion.ravel()], dtype=torch.float64, device=device))
    seconds = all_reduce_max(torch.tensor([stats.seconds], dtype=torch.float64, device=device))
    sums = sums.cpu().numpy()
    k = stats.num_classes
    return EpochStats(k, float(sums[0]), int(sums[1]), int(sums[2]), float(seconds), sums[3:].reshape(k, k).round().astype(np.int64))


# --- The driver ---------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    package: str  # URI of the model package written
    run_path: str  # Ray Train run folder (checkpoints)
    best_epoch: int
    best: dict  # that epoch's metrics
    history: list[dict]


def run(cfg: TrainConfig, checked: TrainPlan | None = None) -> TrainSummary:
    """Train on Ray Train and write the best-by-validation weights as a model package to cfg.out.

    `checked` is `plans.train.plan(cfg)` when the caller has made it already (the CLI, to answer
    bad input before importing this module).
    """
    import ray
    import ray.data
    import ray.train

    checked = checked or plan(cfg)
    cfg, storage, data, name = checked.cfg, checked.storage, checked.data, checked.cfg.name
    start_config, start_bytes = read_starting_weights(cfg.weights, cfg.s3_endpoint, cfg.arch)  # fails fast, with the message
    counts, weights = data.counts(), checked.class_weights()
    drawn = checked.drawn()
    for line in checked.describe():
        print(line, flush=True)
    if checked.finished:  # nothing left to train: no Ray Train start-up (about 15 s on 2 cores) to be told so
        return export_best(checked.so_far, cfg, counts, weights, checked.state["device"] == "cuda", checked.state["decode"])

    start_ray(min_cpus=cfg.workers + 1)  # a CPU beyond the workers' for decoding
    inputs = [("--data", images) for images in data.train] + ([("--val", data.val[0])] if cfg.val else [])
    check_local_paths(
        {f"{option} {images.root.uri}": images.paths[0] for option, images in inputs if images.root.scheme == "file" and images.paths},
        {"--out": locate(cfg.out, cfg.s3_endpoint), "--storage": storage},
    )
    use_gpu = use_gpus(cfg.use_gpu, cfg.workers)
    decode = cfg.decode or ("device" if use_gpu else "cpu")
    datasets = training_datasets(data, cfg, decode)
    start = (start_config, ray.put(start_bytes) if start_bytes is not None else None)
    per_epoch = sum(drawn.values())
    with RemoteProgress("training", cfg.epochs * per_epoch) as progress:
        result = _fit(cfg, name, storage, use_gpu, datasets, {
            "cfg": asdict(cfg), "class_weights": list(weights.values()), "split": data.split(), "start": start,
            "progress": progress.reporter(), "per_epoch": per_epoch, "decode": decode,
        })
    return export_best(result, cfg, counts, weights, use_gpu, decode)


def _fit(cfg: TrainConfig, name: str, storage, use_gpu: bool, datasets: dict, loop_config: dict):
    return fit(
        train_loop_per_worker, loop_config, what="training", workers=cfg.workers, use_gpu=use_gpu, storage=storage, name=name,
        max_failures=cfg.max_failures, datasets=datasets, checkpoint_config=checkpoint_config(), expected=EPOCH_ERRORS,
    )


def worker_batches(cfg: TrainConfig, decode: str, device: torch.device):
    """(train, val) functions from a dataset shard to its batches of model input on `device`.

    decode="cpu": the rows are pixels already, moved by Ray. decode="device": the rows are bytes,
    decoded and augmented here in batches (`DeviceTrainPreset`, `DevicePreset`).
    """
    if decode == "cpu":
        def torch_batches(shard, **options):
            return shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, prefetch_batches=2, **options)

        return torch_batches, torch_batches
    augment = DeviceTrainPreset(train_preset(cfg), device, composite_pairs(cfg.classes), cfg.paste_prob)
    frame = DevicePreset(EvalPreset(cfg.image_size, cfg.geometry), device)

    def val_batch(batch: dict) -> dict:
        errors = np.array(batch["error"], dtype=object)
        images = frame.batch(batch, errors)
        return {"image": images, "label": torch.from_numpy(batch["label"]).to(device), "ok": torch.from_numpy(errors == "").to(device)}

    def batches(to_batch):
        return lambda shard, **options: map(to_batch, shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2, **options))

    return batches(augment), batches(val_batch)


def checkpoint_config():
    import ray.train

    # The two best epochs by accuracy, then loss (`checkpoint_score`); Ray also keeps the latest.
    return ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max")


def pick_best(result) -> tuple:
    """(checkpoint, metrics) of the best epoch by validation accuracy, ties to the lower loss, among those Ray kept."""
    return max(result.best_checkpoints, key=lambda cm: (cm[1]["val_acc"], -cm[1]["val_loss"]))


def export_best(result, cfg: TrainConfig, counts: dict, weights: dict, use_gpu: bool, decode: str) -> TrainSummary:
    """Write the best-by-validation checkpoint (accuracy, then loss) as the model package."""
    best_checkpoint, best = pick_best(result)
    history = checkpoint_file(result.checkpoint, TRAIN_STATE_JSON, json.loads)["history"]
    package = checkpoint_file(best_checkpoint, TRAIN_STATE_JSON, json.loads)["package"]
    state_dict = checkpoint_file(best_checkpoint, WEIGHTS_FILE, load_safetensors)
    training = {
        "config": asdict(cfg),
        "class_counts": counts,
        "class_weights": weights if cfg.class_weighting else None,
        "epochs": history,
        "best_epoch": best["epoch"],
        "best": best,
        "workers": cfg.workers,
        "device": "gpu" if use_gpu else "cpu",
        "decode": decode,
    }
    try:
        save_model_package(state_dict, {**package, "training": training}, cfg.out, cfg.s3_endpoint)
    except InputError as e:  # the run is done and kept: exporting it again costs no training
        raise RunFailed(f"{e}; the finished run is kept: rerun with --storage {cfg.storage} --name {cfg.name} and another --out to export it") from None
    return TrainSummary(locate(cfg.out, cfg.s3_endpoint).uri, str(result.path), best["epoch"], best, history)
