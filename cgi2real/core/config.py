"""Run configurations: frozen dataclasses that travel into Ray as dicts and into every package."""

from dataclasses import dataclass, fields, replace

from cgi2real.core.archs import ARCHS, DEFAULT_ARCH, check_image_size, check_unfreeze_from, get_arch
from cgi2real.core.classes import DEFAULT_CLASSES
from cgi2real.core.errors import InputError

# --- Option checks: one helper, one message shape ("--flag VALUE: expected WHAT") ---------------


@dataclass(frozen=True)
class Span:
    """The numbers a setting may take: bounds (None: unbounded), each closed unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN is in no span
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        if not (self.low_open or self.high_open):
            return f"between {self.low:g} and {self.high:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Span:
    return Span(low)


def between(low: float, high: float, *, high_open: bool = False, low_open: bool = False) -> Span:
    return Span(low, high, low_open, high_open)


PROBABILITY = between(0, 1)


def choose(flag: str, value, allowed, *, optional: bool = False) -> None:
    """Refuse `value` given for `flag` unless it is in `allowed`: a collection of choices, or a Span.

    None passes when `optional` (the setting then takes its default). The message names the flag,
    the value received and what is allowed: "--batch-size 0: expected >= 1".
    """
    if (value is None and optional) or value in allowed:
        return
    expected = allowed if isinstance(allowed, Span) else "one of " + ", ".join(map(str, allowed))
    shown = f"{value:g}" if isinstance(value, float) else repr(value)
    raise InputError(f"{flag} {shown}: expected {expected}")

# How a picture of any shape becomes the model's square input; every model package records its own.
#   crop:   the short side resized, the centre square kept (torchvision's eval; drops the sides of wide photos)
#   pad:    the whole picture, its long side resized, centred on a square of the mean colour
#   squash: the whole picture resized to the square (wide figures get narrower)
# (presets.py implements them; the names live here, torch-free, for the CLI, configs and package checks.)
GEOMETRIES = ("crop", "pad", "squash")
LEGACY_GEOMETRY = "crop"  # packages written before the geometry was recorded
DEFAULT_GEOMETRY = "crop"
# Where JPEGs are decoded: "cpu" (reading tasks send pixels) or "device" (they send the bytes; the
# model's device decodes and, in training, augments them in batches).
DECODES = ("cpu", "device")
AUGMENTATIONS = ("light", "basic", "real")  # training recipes, lightest first (imaging.presets.TrainPreset)
RENDER_JUDGES = ("none", "imagenet")  # synth: keep every render, or only those ImageNet sees a horse in (horse, both)
SCENE_STYLES = ("photo", "simple")  # synth: framed and furnished like photographs, or whole figures in an open field
ADAPT_METHODS = ("bn", "shot")  # adapt: BatchNorm statistics only, or SHOT (stages.adapt)
PRIORS = ("uniform", "estimated")  # adapt --method shot: the class shares its diversity term aims at
ABSTAIN = Span(0, 1, low_open=True)  # --abstain-below: a probability above 0
# TrainConfig settings that default (None) to the arch's own: its input size and its measured recipe (archs.Arch).
ARCH_DEFAULTS = (
    "image_size", "epochs_head", "epochs_finetune", "unfreeze_from", "lr_head", "lr_finetune", "class_weight_power",
    "augment", "background_prob", "paste_prob",
)


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # labeled dataset roots (class folders), local or s3://
    out: str  # where the final model package is written, local or s3://
    overwrite: bool = False  # replace a model package already at `out`
    data_weights: tuple[float, ...] | None = None  # per root: times each image is drawn per epoch; None: 1 each
    val: str | None = None  # a separate validation root; None: split `val_fraction` off `data`
    val_fraction: float = 0.2  # share of each class held out when `val` is None (stratified)
    classes: tuple[str, ...] = DEFAULT_CLASSES  # class names, in the order the model outputs them
    weights: str = "imagenet"  # imagenet | none | a model package to continue from
    arch: str | None = None  # inception_v3 | efficientnet_lite0|1|2 (archs.ARCHS); None: a --weights package's, else inception_v3
    image_size: int | None = None  # square input; None: the arch's own (299, 224, 240, 260) or a --weights package's
    geometry: str = DEFAULT_GEOMETRY  # crop | pad | squash: how pictures become square input (presets.GEOMETRIES)
    epochs_head: int | None = None  # stage 1: only the new heads train, on a frozen backbone; None: the arch's recipe
    epochs_finetune: int | None = None  # stage 2: blocks from `unfreeze_from` on train too; None: the arch's recipe
    unfreeze_from: str | None = None  # first block trained in stage 2 (archs.Arch.blocks); None: the arch's recipe
    batch_size: int = 32  # per worker
    lr_head: float | None = None  # AdamW learning rate in stage 1; None: the arch's recipe
    lr_finetune: float | None = None  # stage 2 peak rate, cosine-annealed to 0 over its epochs; None: the arch's recipe
    freeze_bn: bool = False  # stage 2 keeps every BatchNorm layer's running statistics (the pretrained ones)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing (the quality ablation's choice)
    augment: str | None = None  # light: crops and flips; basic: + the reference notebook's; real: + photo artefacts (presets.TrainPreset); None: the arch's
    background_prob: float | None = None  # share of masked images put on a random background; None: the arch's
    paste_prob: float | None = None  # share of horse/human images that get a figure of the other pasted in (-> both); None: the arch's
    class_weighting: bool = True  # loss weights against class imbalance
    class_weight_power: float | None = None  # weights (n / (k n_c)) ** power: 1 inverse frequency, 0.5 gentler; None: the arch's
    workers: int = 1  # data-parallel Ray Train workers
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has them
    storage: str | None = None  # Ray Train storage_path for checkpoints; None: ~/ray_results
    name: str | None = None  # run name under `storage`; rerun with the same name to resume
    max_failures: int = 0  # worker failures to recover from (from the latest checkpoint)
    max_unreadable: float = 0.05  # abort when a larger share of an epoch's images cannot be read
    decode: str | None = None  # cpu: reading tasks decode and augment; device: the workers do, in batches; None: device on GPUs
    seed: int = 0  # for the validation split and initialization
    pseudo_labels: str | None = None  # a label table whose confident rows are one more training root (self-training)
    min_confidence: float = 0.9  # the least confidence of a pseudo-labeled row that is used
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def __post_init__(self):
        # The arch's own defaults, filled in here so that a run's stored config says what it used.
        # A run from a package takes the package's arch (`for_package`), unknown until it is read.
        from_package = self.weights not in ("imagenet", "none")
        if self.arch is None and not from_package:
            object.__setattr__(self, "arch", DEFAULT_ARCH)
        if self.arch in ARCHS and (not from_package or self.image_size is not None):
            if self.weights == "none":  # from scratch: no frozen random blocks; every block trains from the first epoch
                arch = ARCHS[self.arch]
                scratch = {"epochs_head": 0, "unfreeze_from": arch.blocks[0], "epochs_finetune": arch.epochs_head + arch.epochs_finetune, "lr_finetune": arch.lr_head}
                for name, value in scratch.items():
                    if getattr(self, name) is None:
                        object.__setattr__(self, name, value)
            for name in ARCH_DEFAULTS:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, getattr(ARCHS[self.arch], name))

    def for_package(self, arch: str, image_size: int) -> "TrainConfig":
        """This config, resolved for a run starting from a package of `arch` trained at `image_size` (the default here)."""
        if self.arch is not None and self.arch != arch:
            raise InputError(f"--weights {self.weights} is an {arch} package; --arch {self.arch} cannot start from it (leave --arch out)")
        return replace(self, arch=arch, image_size=self.image_size or image_size)

    @property
    def epochs(self) -> int:
        return self.epochs_head + self.epochs_finetune

    def stage(self, epoch: int) -> str:
        """The stage a 0-based epoch belongs to."""
        return "head" if epoch < self.epochs_head else "finetune"

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is read (a run from a package: after `for_package`)."""
        if not self.data:
            raise InputError("give at least one --data dataset to train on")
        choose("--arch", self.arch, ARCHS)
        arch = get_arch(self.arch)
        assert self.image_size is not None, "a run from a package is resolved by for_package first"
        check_image_size(arch, self.image_size)
        check_unfreeze_from(arch, self.unfreeze_from)
        choose("--epochs-head", self.epochs_head, at_least(0))
        choose("--epochs-finetune", self.epochs_finetune, at_least(0))
        if self.epochs < 1:
            raise InputError(f"--epochs-head {self.epochs_head} and --epochs-finetune {self.epochs_finetune}: expected at least one epoch in total")
        for flag, value in (("--batch-size", self.batch_size), ("--workers", self.workers)):
            choose(flag, value, at_least(1))
        choose("--max-failures", self.max_failures, at_least(-1))
        choose("--val-fraction", self.val_fraction, between(0, 1, low_open=True, high_open=True))
        for flag, value in (("--lr-head", self.lr_head), ("--lr-finetune", self.lr_finetune)):
            choose(flag, value, Span(0, low_open=True))
        choose("--weight-decay", self.weight_decay, at_least(0))
        choose("--augment", self.augment, AUGMENTATIONS)
        choose("--geometry", self.geometry, GEOMETRIES)
        choose("--decode", self.decode, DECODES, optional=True)
        for flag, value in (
            ("--background-prob", self.background_prob), ("--paste-prob", self.paste_prob),
            ("--max-unreadable", self.max_unreadable), ("--min-confidence", self.min_confidence),
        ):
            choose(flag, value, PROBABILITY)
        choose("--class-weight-power", self.class_weight_power, at_least(0))
        choose("--label-smoothing", self.label_smoothing, between(0, 1, high_open=True))


@dataclass(frozen=True)
class AdaptConfig:
    model: str  # the source model package, local or s3://
    data: tuple[str, ...]  # unlabeled target images: folders or s3:// prefixes, scanned like `label` scans
    out: str  # where the adapted model package is written, local or s3://
    overwrite: bool = False  # replace a model package already at `out`
    method: str = "bn"  # bn: BatchNorm statistics only; shot: train the backbone (SHOT, see adapt.py)
    bn_mix: float = 0.5  # bn: share of the target statistics blended into the source ones (1: plain AdaBN; 0.5 measured best)
    epochs: int = 5  # shot: passes over the target images
    batch_size: int = 32  # per worker; shot's diversity term is measured over a batch
    lr: float = 1e-4  # shot: AdamW learning rate of the backbone, cosine-annealed to 0
    weight_decay: float = 1e-4  # shot: AdamW decoupled weight decay
    diversity: float = 1.0  # shot: weight of the diversity term (predictions spread over the classes as `prior` says)
    prior: str = "uniform"  # shot: the class shares aimed at: uniform (SHOT's) or estimated from the source model's predictions
    pseudo_weight: float = 0.3  # shot: weight of the cross-entropy on centroid self-labels (SHOT's beta)
    workers: int = 1  # shot: data-parallel Ray Train workers
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has them
    storage: str | None = None  # shot: Ray Train storage_path for checkpoints; None: ~/ray_results
    name: str | None = None  # shot: run name under `storage`; rerun with the same name to resume
    max_failures: int = 0  # shot: worker failures to recover from (from the latest checkpoint)
    seed: int = 0
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is read."""
        choose("--method", self.method, ADAPT_METHODS)
        if not self.data:
            raise InputError("give at least one --data SOURCE of target images")
        choose("--bn-mix", self.bn_mix, PROBABILITY)
        choose("--epochs", self.epochs, at_least(1))
        choose("--workers", self.workers, at_least(1))
        choose("--batch-size", self.batch_size, at_least(2))  # SHOT's diversity term needs two images
        choose("--max-failures", self.max_failures, at_least(-1))
        choose("--prior", self.prior, PRIORS)
        choose("--lr", self.lr, Span(0, low_open=True))
        for flag, value in (("--weight-decay", self.weight_decay), ("--diversity", self.diversity), ("--pseudo-weight", self.pseudo_weight)):
            choose(flag, value, at_least(0))


@dataclass(frozen=True)
class EvalConfig:
    model: str  # model package, local or s3://
    data: tuple[str, ...]  # labeled datasets to evaluate, each reported separately
    out: str | None = None  # report folder (report.json + confusion PNGs); None: print only
    overwrite: bool = False  # replace a report already at `out`
    batch_size: int = 64  # images per forward pass
    abstain_below: float | None = None  # also report accuracy and coverage when images below this confidence are left out
    geometry: str | None = None  # override the package's geometry (to compare them); None: the package's
    use_gpu: bool | None = None  # None: use a GPU when this machine has one
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is read."""
        if not self.data:
            raise InputError("give at least one --data dataset to evaluate")
        choose("--batch-size", self.batch_size, at_least(1))
        choose("--abstain-below", self.abstain_below, ABSTAIN, optional=True)
        choose("--geometry", self.geometry, GEOMETRIES, optional=True)


GPU_BATCH_SIZE, CPU_BATCH_SIZE = 256, 32  # images per labeling forward pass by default


@dataclass(frozen=True)
class LabelConfig:
    source: str | None  # folder or s3:// prefix of images, listed recursively (or one image file); None: `manifest`
    model: str  # model package, local or s3://
    out: str  # the label table: a folder or s3:// prefix of Parquet files
    manifest: str | None = None  # instead of `source`: a Parquet/CSV file with a path column, or an S3 Inventory manifest.json
    batch_size: int | None = None  # images per forward pass; None: 256 on GPU, 32 on CPU
    actors: int | None = None  # model replicas; None: one per core (at most 8 per CPU node), or per GPU 2 (decode="cpu") or 4 (decode="device")
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has them
    decode: str | None = None  # "cpu" (reading tasks decode) or "device" (the model's device decodes JPEGs); None: device on GPUs
    compile: bool | None = None  # torch.compile the model step (model.inference); None: on GPUs only
    overwrite: bool = False  # delete an existing table at `out` first instead of resuming it
    force: bool = False  # break the lease of a run that died holding the table (not renewed for 2 minutes)
    rows_per_file: int = 100_000  # commit a Parquet file once this many rows are ready (~5 MB)
    commit_seconds: float = 60.0  # commit a file at least this often, so a crash loses little
    abstain_below: float | None = None  # leave images whose top probability is below this unlabeled ("low confidence")
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is read."""
        for flag, value in (("--batch-size", self.batch_size), ("--actors", self.actors), ("--rows-per-file", self.rows_per_file)):
            choose(flag, value, at_least(1), optional=True)
        choose("--commit-seconds", self.commit_seconds, Span(0, low_open=True))
        choose("--abstain-below", self.abstain_below, ABSTAIN, optional=True)
        choose("--decode", self.decode, DECODES, optional=True)


@dataclass(frozen=True)
class ReviewConfig:
    table: str  # the label table: a folder or s3:// prefix written by `cgi2real label`
    out: str  # folder (or s3:// prefix) for index.html, its thumbnails and plots
    per_class: int = 24  # thumbnails drawn at random per class
    lowest: int = 48  # least confident labeled rows shown, with every class's probability
    errors: int = 48  # error rows shown (drawn at random when there are more)
    seed: int = 0  # seed of the random draws
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is read."""
        for flag, value in (("--per-class", self.per_class), ("--lowest", self.lowest), ("--errors", self.errors)):
            choose(flag, value, at_least(0))


@dataclass(frozen=True)
class SynthConfig:
    out: str  # folder or s3:// prefix; images go to out/<class>/
    per_class: int  # images per class
    size: int = 299  # square image side in px
    seed: int = 0  # image i of a class is rendered from seed * 1_000_003 + i
    classes: tuple[str, ...] = DEFAULT_CLASSES  # any of both, horse, human
    masks: bool = True  # also write figure masks to out/_masks/ (training uses them)
    scenes: str = "photo"  # photo (framed and furnished like photographs) or simple (whole figures in an open field)
    judge: str = "none"  # imagenet: keep the horse and both renders in which ImageNet sees a horse (stages.synth)
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS

    def check(self) -> None:
        """Refuse out-of-range settings, before anything is rendered."""
        unknown = [name for name in self.classes if name not in DEFAULT_CLASSES]
        if unknown:
            raise InputError(f"the renderer draws {', '.join(DEFAULT_CLASSES)}; it cannot draw {', '.join(unknown)}")
        choose("--per-class", self.per_class, at_least(1))
        choose("--size", self.size, at_least(32))
        choose("--scenes", self.scenes, SCENE_STYLES)
        choose("--judge", self.judge, RENDER_JUDGES)


def from_dict(cls, values: dict):
    """Rebuild a config dataclass from asdict() output (lists back to tuples), ignoring unknown keys."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)

