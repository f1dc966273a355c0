"""Adaptation: fit a trained model to the unlabeled photos it is about to label (source-free).

The target images are listed like `label` lists a bucket (folder names are ignored; no label is
ever read) and streamed through Ray Data. `bn` re-estimates every BatchNorm layer's statistics on
them in forward passes (AdaBN), optionally blended into the source statistics. `shot` trains the
backbone with the classifier fixed (SHOT), on Ray Train with checkpoints and resume as `train`
runs. Either way the result is an ordinary model package whose config records the adaptation.

SHOT: J. Liang, D. Hu, J. Feng, "Do We Really Need to Access the Source Data? Source Hypothesis
Transfer for Unsupervised Domain Adaptation", ICML 2020. AdaBN: Y. Li et al., "Revisiting Batch
Normalization For Practical Domain Adaptation", 2016.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cgi2real.core.config import AdaptConfig, from_dict
from cgi2real.core.errors import InputError
from cgi2real.formats.checkpoints import TRAIN_STATE_JSON, checkpoint_file
from cgi2real.formats.package import WEIGHTS_FILE, read_model_package
from cgi2real.imaging.presets import TrainPreset
from cgi2real.model.inputs import autocast, to_model
from cgi2real.model.networks import ModelPackage, arch_of, classifier, num_outputs, package_from_bytes, save_model_package
from cgi2real.pipelines.datasets import augmented_target_dataset, target_dataset
from cgi2real.plans.adapt import MIN_IMAGES, AdaptPlan, plan
from cgi2real.runtime.cluster import check_local_paths, node_cpus, start_ray, use_gpus
from cgi2real.runtime.progress import RemoteProgress, counted
from cgi2real.runtime.trainer import Worker, all_reduce_max, all_reduce_sum, fit
from cgi2real.storage.locations import locate

PRIOR_UNIFORM_SHARE = 0.1  # an estimated prior is blended with uniform: a class the source model misses is not ruled out
EPS = 1e-5


# --- BatchNorm statistics (bn) -----------------------------------------------------------------


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def estimate_bn_statistics(model: nn.Module, batches, device: torch.device, mean, std) -> tuple[int, int]:
    """Replace every BatchNorm layer's running mean and variance by their average over `batches`.

    Forward passes only, in eval mode except the BatchNorm layers, whose momentum is set per batch
    to its share of the images so far: the result is the image-weighted average of the batches'
    statistics (a cumulative average, not an exponential one). Rows with `ok` False are left
    out; a lone readable image waits for the next batch (one image has no variance). Returns
    (images used, images unreadable).
    """
    layers = batch_norms(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    model.eval()
    for layer in layers:
        layer.train()
    used, bad, waiting = 0, 0, None
    try:
        for batch in batches:
            ok = batch["ok"].to(device).bool()
            bad += int((~ok).sum())
            images = to_model(batch["image"].to(device)[ok], device, mean, std)
            if waiting is not None:
                images, waiting = torch.cat([waiting, images]), None
            if len(images) < 2:
                waiting = images if len(images) else None
                continue
            for layer in layers:
                layer.momentum = len(images) / (used + len(images))
            with autocast(device):
                model(images)
            used += len(images)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    return used, bad


def mix_bn_statistics(model: nn.Module, source: dict[str, torch.Tensor], mix: float) -> None:
    """Running statistics = `mix` x the model's (the target's) + (1 - `mix`) x `source`'s (a state dict)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in ("running_mean", "running_var"):
                target = getattr(module, buffer)
                target.mul_(mix).add_(source[f"{name}.{buffer}"].to(target.device), alpha=1 - mix)


def bn_task(config: dict, weights, dataset, cfg: dict, use_gpu: bool, reporter=None) -> tuple[bytes, int, int, float]:
    """Ray task: the source package's model with target statistics.

    Returns (safetensors bytes, images used, unreadable, seconds from the first batch to the last,
    which is the streaming rate once the pipeline runs).
    """
    import ray

    cfg = from_dict(AdaptConfig, cfg)
    package = package_from_bytes(config, ray.get(weights) if not isinstance(weights, bytes) else weights, "source model")
    device = torch.device("cuda" if use_gpu else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(node_cpus())  # Ray sets one thread per reserved CPU
    model = package.model.to(device)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    arrivals = []
    batches = counted(_noting_arrivals(dataset.iter_torch_batches(batch_size=cfg.batch_size, prefetch_batches=2), arrivals), reporter)
    used, bad = estimate_bn_statistics(model, batches, device, package.mean, package.std)
    if device.type == "cuda":
        torch.cuda.synchronize()
    streaming = time.perf_counter() - arrivals[0] if arrivals else 0.0
    if used >= MIN_IMAGES:
        mix_bn_statistics(model, source, cfg.bn_mix)
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}), used, bad, streaming


def _noting_arrivals(batches, arrivals: list):
    for batch in batches:
        arrivals.append(time.perf_counter())
        yield batch


# --- SHOT: information maximisation and centroid self-labels ------------------------------------


def shot_loss(
    logits: torch.Tensor, pseudo_labels: torch.Tensor, diversity: float = 1.0, pseudo_weight: float = 0.3, prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict]:
    """SHOT's objective on one batch of target logits (B, K) and their self-labels (B,), -1 for none.

    entropy: mean over images of H(p_i), small when each prediction is confident.
    diversity: KL(mean_i p_i || prior), small when the batch's predictions spread over the classes
    as the prior says; with a uniform prior (SHOT's) it is log K - H(mean_i p_i), so the model
    cannot call every image one class. An estimated prior (`estimate_prior`) lets a skewed bucket
    stay skewed.
    self-label: cross-entropy against the centroid labels (`centroid_labels`).
    loss = entropy + diversity_weight * diversity + pseudo_weight * self-label.
    """
    p = torch.softmax(logits.float(), dim=1)
    entropy = -(p * torch.log(p + EPS)).sum(dim=1).mean()
    mean_p = p.mean(dim=0)
    prior = torch.full_like(mean_p, 1 / len(mean_p)) if prior is None else prior.to(mean_p)
    divergence = (mean_p * (torch.log(mean_p + EPS) - torch.log(prior + EPS))).sum()
    labeled = pseudo_labels >= 0
    self_label = F.cross_entropy(logits.float()[labeled], pseudo_labels[labeled]) if labeled.any() else logits.sum() * 0
    loss = entropy + diversity * divergence + pseudo_weight * self_label
    return loss, {"entropy": entropy.detach(), "diversity": divergence.detach(), "self_label": self_label.detach()}


def _no_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@torch.no_grad()
def estimate_prior(probs: torch.Tensor, iterations: int = 100, reduce=_no_reduce) -> torch.Tensor:
    """The class shares of the target images, by EM on the model's predictions (Saerens et al., 2002).

    probs (N, K) were made under a uniform prior (training weights the classes to balance); each
    step re-weights them by the current prior and takes their mean as the next one. `reduce` sums
    over data-parallel workers.
    """
    k = probs.shape[1]
    n = reduce(torch.tensor(float(len(probs)), device=probs.device))
    prior = torch.full((k,), 1 / k, device=probs.device)
    for _ in range(iterations):
        weighted = probs.float() * prior
        weighted = weighted / weighted.sum(dim=1, keepdim=True).clamp_min(1e-12)
        prior = reduce(weighted.sum(dim=0)) / n
    return prior


def centroid_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 2, reduce=_no_reduce) -> torch.Tensor:
    """Self-labels (N,) from class centroids in feature space, as SHOT computes them.

    features (N, D): the backbone's pooled features; probs (N, K): the model's predictions.
    Features get a constant 1 appended and are L2-normalized; the first centroids are the
    prediction-weighted means, then each image takes its nearest centroid by cosine, and the
    centroids are recomputed from those labels (`rounds` - 1 more times). Classes that no image
    predicts get no centroid. `reduce` sums a tensor over data-parallel workers, so that the
    centroids are those of all the images, wherever they were read.
    """
    features = F.normalize(torch.cat([features.float(), torch.ones(len(features), 1, device=features.device)], dim=1), dim=1)
    k = probs.shape[1]
    weights = probs.float()
    present = reduce(F.one_hot(probs.argmax(dim=1), k).sum(dim=0).float()) > 0
    labels = None
    for _ in range(rounds):
        centroids = reduce(weights.T @ features) / (reduce(weights.sum(dim=0))[:, None] + 1e-8)  # (K, D + 1)
        similarity = features @ F.normalize(centroids, dim=1).T  # (N, K)
        labels = similarity.masked_fill(~present, -float("inf")).argmax(dim=1)
        weights = F.one_hot(labels, k).float()
    return labels


class FeatureTap:
    """Keeps the last pooled features (B, D) of the network: the classifier's input."""

    def __init__(self, model: nn.Module):
        self.features: torch.Tensor | None = None
        classifier(model).register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs) -> None:
        self.features = inputs[0].flatten(1)


@torch.no_grad()
def predict_target(model: nn.Module, tap: FeatureTap, batches, device: torch.device, mean, std) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Eval-mode pass: (features (M, D), probabilities (M, K), image indices (M,), unreadable count)."""
    model.eval()
    features, probs, indices, bad = [], [], [], 0
    for batch in batches:
        ok = batch["ok"].to(device).bool()
        bad += int((~ok).sum())
        if not ok.any():
            continue
        images = to_model(batch["image"].to(device)[ok], device, mean, std)
        with autocast(device):
            logits = model(images)
        features.append(tap.features.float())
        probs.append(torch.softmax(logits.float(), dim=1))
        indices.append(batch["index"].to(device)[ok].long())
    if not features:
        return torch.zeros(0, 1, device=device), torch.zeros(0, num_outputs(model), device=device), torch.zeros(0, dtype=torch.long, device=device), bad
    return torch.cat(features), torch.cat(probs), torch.cat(indices), bad


@dataclass
class ShotStats:
    """One SHOT epoch, summed over workers."""

    loss: float = 0.0
    entropy: float = 0.0
    diversity: float = 0.0
    self_label: float = 0.0
    images: int = 0
    bad: int = 0
    seconds: float = 0.0
    predicted: list[int] = field(default_factory=list)  # images per predicted class, during training


def shot_epoch(
    model: nn.Module, optimizer, batches, labels: torch.Tensor, device: torch.device, cfg: AdaptConfig, mean, std, prior: torch.Tensor | None = None
) -> ShotStats:
    """One pass of SHOT training over augmented target batches {image, index, ok}; `labels` by image index."""
    model.train()
    k = num_outputs(model)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, entropy, diversity, self-label (x rows)
    predicted = torch.zeros(k, dtype=torch.int64, device=device)
    rows, seen, start = torch.zeros((), dtype=torch.int64, device=device), 0, time.perf_counter()
    for batch in batches:
        ok = batch["ok"].to(device).bool()
        images = to_model(batch["image"].to(device), device, mean, std)
        with autocast(device):
            logits = model(images)
        pseudo = labels[batch["index"].to(device).long()]
        # unreadable rows stay in the batch (every worker takes the same steps) but out of the loss
        loss, parts = shot_loss(logits[ok], pseudo[ok], cfg.diversity, cfg.pseudo_weight, prior) if ok.sum() > 1 else (logits.sum() * 0, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = ok.sum()
        if parts is not None:
            sums += torch.stack([loss.detach(), parts["entropy"], parts["diversity"], parts["self_label"]]).double() * n
            predicted += torch.bincount(logits.detach()[ok].argmax(dim=1), minlength=k)
        rows += n
        seen += len(ok)
    n = int(rows)
    totals = (sums / max(n, 1)).tolist()
    return ShotStats(*totals, images=n, bad=seen - n, seconds=time.perf_counter() - start, predicted=predicted.tolist())


def freeze_classifier(model: nn.Module) -> list[nn.Parameter]:
    """Fix the classifier (and leave Inception's auxiliary head out of training); return the backbone's parameters."""
    fixed = tuple(f"{layer}." for layer in arch_of(model).head)
    if hasattr(model, "aux_logits"):
        model.aux_logits = False  # its loss is not SHOT's; the package keeps its weights as they were
        fixed = (*fixed, "AuxLogits.")
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(fixed)
    return [p for p in model.parameters() if p.requires_grad]


def shot_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: config = {"cfg", "package" (config), "weights" (ObjectRef), "images", "progress" (a ProgressReporter)}."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = from_dict(AdaptConfig, config["cfg"])
    worker = Worker.start(config, cfg.seed)
    device, progress, scale = worker.device, worker.progress, worker.world_size
    package = package_from_bytes(config["package"], ray.get(config["weights"]), "source model")
    model = package.model
    resumed = worker.resumed()
    if resumed:
        model.load_state_dict(resumed[0])
    tap = FeatureTap(model)
    worker.place(model)  # before the optimizer, so that its state lands on the device too
    optimizer = torch.optim.AdamW(freeze_classifier(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, history, prior = 0, [], None
    if resumed:
        _, opt_state, state = resumed
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, prior = state["epoch"] + 1, state["history"], state["prior"]
        worker.tell(f"resuming after epoch {start_epoch}/{cfg.epochs} from its checkpoint")
    parallel_model = ray.train.torch.prepare_model(model)
    target, train = ray.train.get_dataset_shard("target"), ray.train.get_dataset_shard("train")
    mean, std = package.mean, package.std
    if progress:  # an epoch passes over the images twice: self-labels, then training
        progress.restart(start_epoch * 2 * config["images"])
    for epoch in range(start_epoch, cfg.epochs):
        if progress:
            progress.note(f"epoch {epoch + 1} of {cfg.epochs}")
        target_batches = counted(target.iter_torch_batches(batch_size=cfg.batch_size, prefetch_batches=2), progress, scale)
        features, probs, indices, bad = predict_target(model, tap, target_batches, device, mean, std)
        readable = int(all_reduce_sum(torch.tensor(len(indices), device=device)))
        if readable < MIN_IMAGES:
            raise TooFewImages(f"only {readable} target images could be read and decoded (at least {MIN_IMAGES} are needed)")
        if prior is None:  # the source model's view of the target's class shares, kept for the whole run
            k = probs.shape[1]
            uniform = torch.full((k,), 1 / k, device=device)
            prior = (uniform if cfg.prior == "uniform" else (1 - PRIOR_UNIFORM_SHARE) * estimate_prior(probs, reduce=all_reduce_sum) + PRIOR_UNIFORM_SHARE * uniform).tolist()
            if cfg.prior == "estimated":
                worker.tell("estimated class shares of the target: " + ", ".join(f"{c} {p:.2f}" for c, p in zip(package.classes, prior)))
        labels = torch.full((config["images"],), -1, dtype=torch.long, device=device)
        labels[indices] = centroid_labels(features, probs, reduce=all_reduce_sum)
        labels = all_reduce_max(labels)
        agree = int(all_reduce_sum((labels[indices] == probs.argmax(dim=1)).sum()))
        del features, probs
        lr = optimizer.param_groups[0]["lr"]
        batches = counted(train.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, prefetch_batches=2), progress, scale)  # drop_last: a 1-image batch breaks BatchNorm
        stats = shot_epoch(parallel_model, optimizer, batches, labels, device, cfg, mean, std, torch.tensor(prior, device=device))
        scheduler.step()
        unreadable = int(all_reduce_sum(torch.tensor(bad, device=device)))
        metrics = {
            **shot_metrics(epoch, cfg.epochs, lr, stats, labels, agree / readable, package.classes, device),
            "readable": readable, "unreadable": unreadable, "prior": dict(zip(package.classes, prior)),
        }
        history.append(metrics)
        state = {"epoch": epoch, "history": history, "config": config["cfg"], "prior": prior}
        worker.report(epoch, metrics, model, optimizer, scheduler, state, format_epoch(metrics))


class TooFewImages(RuntimeError):
    """Fewer target images than MIN_IMAGES could be read."""


def shot_metrics(epoch, epochs, lr, stats: ShotStats, labels, agreement, classes, device) -> dict:
    """An epoch's numbers summed over workers: losses, self-label and prediction counts per class."""
    k = len(classes)
    sums = torch.tensor(
        [stats.loss * stats.images, stats.entropy * stats.images, stats.diversity * stats.images, stats.self_label * stats.images,
         stats.images, stats.bad, *stats.predicted], dtype=torch.float64, device=device,
    )
    sums = all_reduce_sum(sums).tolist()
    seconds = float(all_reduce_max(torch.tensor([stats.seconds], dtype=torch.float64, device=device)))
    n = max(sums[4], 1)
    self_labels = torch.bincount(labels[labels >= 0], minlength=k).tolist()  # already the same on every worker
    return {
        "epoch": epoch + 1, "epochs": epochs, "lr": lr,
        "loss": sums[0] / n, "entropy": sums[1] / n, "diversity": sums[2] / n, "self_label_loss": sums[3] / n,
        "self_labels": dict(zip(classes, self_labels)), "self_label_agreement": agreement,
        "predicted": dict(zip(classes, (int(c) for c in sums[6:6 + k]))),
        "images": int(sums[4]), "img_per_s": sums[4] / seconds if seconds else 0.0,
    }


def format_epoch(m: dict) -> str:
    shares = ", ".join(f"{name} {n}" for name, n in m["self_labels"].items())
    bad = f" | {m['unreadable']} unreadable images skipped" if m.get("unreadable") else ""
    return (
        f"epoch {m['epoch']}/{m['epochs']} loss {m['loss']:.4f} (entropy {m['entropy']:.3f}, diversity {m['diversity']:.3f}, "
        f"self-label {m['self_label_loss']:.3f}) | self-labels {shares} ({m['self_label_agreement']:.0%} agree with the model)"
        f" | {m['img_per_s']:.1f} img/s | lr {m['lr']:.2e}{bad}"
    )


# --- The driver ---------------------------------------------------------------------------------


@dataclass
class AdaptSummary:
    package: str  # URI of the adapted package
    method: str
    images: int  # target image files listed
    used: int  # images the adaptation used (readable)
    bad: int  # unreadable images skipped
    seconds: float
    history: list[dict] = field(default_factory=list)  # shot: per-epoch metrics
    streaming_seconds: float | None = None  # bn: from the first batch's arrival to the statistics

    @property
    def images_per_second(self) -> float:
        """End to end: Ray Data and model start-up included (the package write excluded)."""
        return (self.used + self.bad) / self.seconds if self.seconds else 0.0


def run(cfg: AdaptConfig, checked: AdaptPlan | None = None) -> AdaptSummary:
    """Adapt the package at cfg.model to the images under cfg.data; write the result to cfg.out.

    `checked` is `plans.adapt.plan(cfg)` when the caller has made it already.
    """
    checked = checked or plan(cfg)
    sources, out, storage, name, images = checked.sources, checked.out, checked.storage, checked.name, checked.images
    config, weights = read_model_package(cfg.model, cfg.s3_endpoint)
    package = package_from_bytes(config, weights, locate(cfg.model, cfg.s3_endpoint).uri)  # refuse a bad package here
    for line in checked.describe():
        print(line, flush=True)
    start_ray(min_cpus=cfg.workers + 1)
    check_local_paths(
        {f"--data {files.root.uri}": files.paths[0] for files in sources if files.root.scheme == "file"},
        {"--out": out, **({"--storage": storage} if storage is not None else {})},
    )
    use_gpu = use_gpus(cfg.use_gpu, cfg.workers if cfg.method == "shot" else 1)
    start = time.monotonic()
    streaming = None
    if cfg.method == "bn":
        state, used, bad, streaming = _adapt_bn(cfg, sources, package, config, weights, use_gpu)
        history = []
    else:
        state, used, bad, history = _adapt_shot(cfg, storage, name, sources, package, config, weights, use_gpu)
    adaptation = {
        "method": cfg.method, "sources": [f.root.uri for f in sources], "images": used, "unreadable": bad,
        "source_model": package.model_id, "config": asdict(cfg), **({"epochs": history} if history else {}),
    }
    seconds = time.monotonic() - start
    kept = {k: v for k, v in config.items() if k not in ("weights_sha256", "created_at", "cgi2real_version", "adaptation")}
    save_model_package(state, {**kept, "adaptation": adaptation}, cfg.out, cfg.s3_endpoint)
    return AdaptSummary(out.uri, cfg.method, images, used, bad, seconds, history, streaming)


def _adapt_bn(cfg: AdaptConfig, sources, package: ModelPackage, config: dict, weights: bytes, use_gpu: bool) -> tuple[dict, int, int, float]:
    import ray

    dataset = target_dataset(sources, package.eval_preset())
    task = ray.remote(bn_task).options(num_cpus=1, num_gpus=1 if use_gpu else 0)
    with RemoteProgress("measuring statistics", sum(len(f) for f in sources)) as progress:
        data, used, bad, streaming = ray.get(task.remote(config, ray.put(weights), dataset, asdict(cfg), use_gpu, progress.reporter()))
    if used < MIN_IMAGES:
        raise InputError(f"only {used} target images could be read and decoded ({bad} could not); adaptation needs at least {MIN_IMAGES}")
    print(f"BatchNorm statistics of {used} images ({bad} unreadable skipped), blended {cfg.bn_mix:g} into the source's", flush=True)
    return load_safetensors(data), used, bad, streaming


def _adapt_shot(cfg: AdaptConfig, storage, name: str, sources, package: ModelPackage, config: dict, weights: bytes, use_gpu: bool) -> tuple[dict, int, int, list]:
    import ray

    images = sum(len(f) for f in sources)
    with RemoteProgress("adapting", cfg.epochs * 2 * images) as progress:
        result = _fit_shot(cfg, storage, name, sources, package, use_gpu, {
            "cfg": asdict(cfg), "package": config, "weights": ray.put(weights), "images": images, "progress": progress.reporter(),
        })
    history = checkpoint_file(result.checkpoint, TRAIN_STATE_JSON, json.loads)["history"]
    state = checkpoint_file(result.checkpoint, WEIGHTS_FILE, load_safetensors)
    last = history[-1]
    return state, last["readable"], last["unreadable"], history


def _fit_shot(cfg: AdaptConfig, storage, name: str, sources, package: ModelPackage, use_gpu: bool, loop_config: dict):
    import ray.train

    datasets = {
        "target": target_dataset(sources, package.eval_preset()),
        "train": augmented_target_dataset(sources, TrainPreset(package.image_size, "basic", 0.0, package.geometry)),
    }
    return fit(
        shot_loop_per_worker, loop_config, what="adaptation", workers=cfg.workers, use_gpu=use_gpu, storage=storage, name=name,
        max_failures=cfg.max_failures, datasets=datasets, expected=TooFewImages,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),  # the latest is the result: no labels rank epochs
    )


def describe_adaptation(adaptation: dict) -> list[str]:
    """Lines for `cgi2real info`."""
    cfg = adaptation.get("config", {})
    how = f"bn, mix {cfg.get('bn_mix', 1):g}" if adaptation["method"] == "bn" else f"shot, {len(adaptation.get('epochs', []))} epochs, lr {cfg.get('lr', 0):g}"
    lines = [
        f"adapted      {how} on {adaptation['images']} images ({adaptation.get('unreadable', 0)} unreadable) from model {adaptation['source_model']}",
        f"  sources    {', '.join(adaptation['sources'])}",
    ]
    for m in adaptation.get("epochs", []):
        lines.append("  " + format_epoch(m))
    return lines
