"""Training: two-stage transfer learning on Ray Train, checkpoints, resume, the final package.

The maths are plain torch (`model.training`: loss, `train_one_epoch`, `evaluate`); the inputs are
`pipelines.datasets`; the Ray Train scaffold is `runtime.trainer`. Here: the worker's loop over
epochs and stages, and the driver (`run`): check, resume, start Ray, fit, export the best epoch.
"""

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from cgi2real.core.archs import get_arch
from cgi2real.core.classes import composite_pairs
from cgi2real.core.config import LEGACY_GEOMETRY, TrainConfig, from_dict
from cgi2real.core.errors import InputError, RunFailed
from cgi2real.formats.checkpoints import SPLIT_JSON, TRAIN_STATE_JSON, check_same_settings, checkpoint_file, latest_result, read_checkpoint_json
from cgi2real.formats.class_folders import reuse_split, scan_labeled_dataset, stratified_split
from cgi2real.formats.label_table import pseudo_labeled_images
from cgi2real.formats.package import WEIGHTS_FILE, read_package_info
from cgi2real.imaging.gpu_eval import DevicePreset
from cgi2real.imaging.gpu_train import DeviceTrainPreset
from cgi2real.imaging.presets import EvalPreset
from cgi2real.model.networks import initial_model, package_config, read_starting_weights, save_model_package, set_trainable
from cgi2real.model.training import (
    EpochStats,
    MaskedCrossEntropy,
    UnreadableImages,
    check_readable,
    class_weights,
    epoch_metrics,
    evaluate,
    format_epoch,
    make_optimizer,
    train_one_epoch,
)
from cgi2real.pipelines.datasets import TrainingData, sum_counts, train_preset, training_datasets
from cgi2real.runtime.cluster import check_local_paths, start_ray, use_gpus
from cgi2real.runtime.progress import RemoteProgress, counted
from cgi2real.runtime.trainer import Worker, all_reduce_max, all_reduce_sum, fit
from cgi2real.storage.locations import check_output, locate

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
        check_readable(train_stats, "training", epoch + 1, cfg.max_unreadable)
        scheduler.step()
        val_stats = reduce_stats(evaluate(model, loss_fn, val_batches_of(val_shard), device, arch.mean, arch.std), device)
        check_readable(val_stats, "validation", epoch + 1, cfg.max_unreadable)
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


def prepare_inputs(cfg: TrainConfig, split: dict | None = None) -> TrainingData:
    """Validate everything cheap before starting Ray: settings, datasets, split, weights, --out.

    `split` is a resumed run's held-out split (`TrainingData.split`): its validation files stay
    held out, files added since go to training only, and a validation file that is gone is refused.
    """
    cfg.check()
    weights = list(cfg.data_weights) if cfg.data_weights else [1.0] * len(cfg.data)
    if len(weights) != len(cfg.data) or min(weights) < 0 or max(weights) <= 0:
        raise InputError(
            f"--data-weights needs one weight >= 0 per --data root ({len(cfg.data)}), not all 0; got {','.join(map(str, weights))}"
        )
    roots = [scan_labeled_dataset(uri, cfg.classes, cfg.s3_endpoint, require_every_class=False) for uri in cfg.data]
    pseudo = [pseudo_labeled_images(cfg.pseudo_labels, cfg.classes, cfg.min_confidence, cfg.s3_endpoint)] if cfg.pseudo_labels else []
    notes = []
    if cfg.val:
        data = TrainingData(roots + pseudo, [scan_labeled_dataset(cfg.val, cfg.classes, cfg.s3_endpoint, require_every_class=False)], weights + [1.0] * len(pseudo), held_out=False)
    elif split is not None:
        kept = [reuse_split(images, record) for images, record in zip(roots + pseudo, split["roots"])]
        new, gone = sum(k.new for k in kept), sum(k.gone for k in kept)
        notes.append(f"kept the run's validation split ({sum(len(k.val) for k in kept)} images)")
        if new:
            notes.append(f"{new} file(s) added since the run started go to training only")
        if gone:
            notes.append(f"{gone} training file(s) of the run are gone")
        data = TrainingData([k.train for k in kept], [k.val for k in kept], weights + [1.0] * len(pseudo), notes=notes)
    else:
        # pseudo-labels train only: accuracy on a model's own labels would say nothing
        splits = [stratified_split(images, cfg.val_fraction, cfg.seed) for images in roots] + [(images, images.subset([])) for images in pseudo]
        data = TrainingData([t for t, _ in splits], [v for _, v in splits], weights + [1.0] * len(pseudo))
    drawn = data.per_epoch()
    missing = [name for name, n in drawn.items() if n == 0]
    if missing:
        found = "; ".join(f"{images.root.uri}: {_counts_text(images.class_counts())}" for images in roots)
        raise InputError(f"no images of class {', '.join(missing)} in the training data ({found}); pass --classes to train on other classes")
    if sum(drawn.values()) < cfg.batch_size * cfg.workers:
        raise InputError(
            f"{round(sum(drawn.values()))} training images per epoch are fewer than --batch-size {cfg.batch_size} x --workers {cfg.workers}: "
            "lower them or add images"
        )
    if sum(len(v) for v in data.val) == 0:
        raise InputError(f"no validation images: give --val DIR or more images per class than {max(sum_counts(roots).values())}")
    inputs = [("DATA", images.root) for images in roots] + [("--val", v.root) for v in data.val if cfg.val]
    if cfg.pseudo_labels:
        inputs.append(("--pseudo-labels", locate(cfg.pseudo_labels, cfg.s3_endpoint)))
    check_output(locate(cfg.out, cfg.s3_endpoint), "--out", inputs, "model package")
    return data


def run(cfg: TrainConfig) -> TrainSummary:
    """Train on Ray Train and write the best-by-validation weights as a model package to cfg.out."""
    import ray
    import ray.data
    import ray.train

    cfg = resolve_start(cfg)
    cfg.check()
    name = cfg.name or datetime.now().strftime("cgi2real-%Y%m%d-%H%M%S")
    storage = locate(cfg.storage or os.path.join(os.path.expanduser("~"), "ray_results"), cfg.s3_endpoint)
    cfg = replace(cfg, name=name, storage=storage.uri)  # what a rerun needs to resume or export this run
    so_far = latest_result(storage.child(name))
    latest = so_far.checkpoint if so_far is not None else None
    state = check_resumable(latest, storage.child(name), cfg) if latest is not None else None
    data = prepare_inputs(cfg, read_checkpoint_json(latest, SPLIT_JSON) if latest is not None else None)
    start_config, start_bytes = read_starting_weights(cfg.weights, cfg.s3_endpoint, cfg.arch)  # fails fast, with the message
    counts = data.counts()
    drawn = {c: round(n) for c, n in data.per_epoch().items()}
    pasted = {c: round(n) for c, n in data.per_epoch(cfg.paste_prob).items()}
    weights = class_weights(pasted, cfg.class_weight_power)
    for root in counts["roots"]:
        masks = f", {root['masks']} with masks" if root["masks"] else ""
        print(f"  {root['uri']}: {_counts_text(root['train'])}{masks}; drawn x{root['weight']:g} per epoch")
    after = f"; after pasting about {_counts_text(pasted)}" if pasted != drawn else ""
    print(f"training on {sum(drawn.values())} images per epoch ({_counts_text(drawn)}{after}), validating on {sum(counts['val'].values())}")
    print(f"run {name!r} in {storage.uri}: rerun with --storage {storage.uri} --name {name} to resume", flush=True)
    for note in data.notes:
        print(f"resuming: {note}")
    if state is not None and state["epoch"] + 1 >= cfg.epochs and "device" in state:
        # Nothing left to train: no Ray Train start-up (about 15 s on 2 cores) to be told so.
        print(f"run {name!r} finished all {cfg.epochs} epochs already: its best checkpoint becomes the package", flush=True)
        return export_best(so_far, cfg, counts, weights, state["device"] == "cuda", state["decode"])

    start_ray(min_cpus=cfg.workers + 1)  # a CPU beyond the workers' for decoding
    inputs = [("DATA", images) for images in data.train] + ([("--val", data.val[0])] if cfg.val else [])
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


def resolve_start(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the arch (and its defaults) of the package it starts from, if it starts from one."""
    if cfg.weights in ("imagenet", "none"):
        return cfg
    if not locate(cfg.weights, cfg.s3_endpoint).exists():
        raise InputError(f"--weights {cfg.weights!r}: expected imagenet, none or a model package folder (there is none at that path)")
    info = read_package_info(cfg.weights, cfg.s3_endpoint)
    return cfg.for_package(info.arch, info.image_size)


def _fit(cfg: TrainConfig, name: str, storage, use_gpu: bool, datasets: dict, loop_config: dict):
    return fit(
        train_loop_per_worker, loop_config, what="training", workers=cfg.workers, use_gpu=use_gpu, storage=storage, name=name,
        max_failures=cfg.max_failures, datasets=datasets, checkpoint_config=checkpoint_config(), expected=UnreadableImages,
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


# Settings that may change when a run resumes; any other difference would corrupt it.
RESUMABLE_CHANGES = frozenset({"out", "workers", "use_gpu", "decode", "storage", "name", "max_failures", "max_unreadable", "s3_endpoint"})
# What a run checkpointed before a setting existed did instead (compared when resuming it).
LEGACY_SETTINGS = {"geometry": LEGACY_GEOMETRY, "pseudo_labels": None, "min_confidence": 0.9, "arch": "inception_v3", "class_weight_power": 1.0, "freeze_bn": False}


def check_resumable(latest, run_folder, cfg: TrainConfig) -> dict:
    """Refuse to resume a run whose latest checkpoint was made with other training settings; return its train state."""
    return check_same_settings(latest, run_folder, cfg, RESUMABLE_CHANGES, LEGACY_SETTINGS)


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


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items())
