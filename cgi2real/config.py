"""Run configurations: frozen dataclasses that travel into Ray as dicts and into every package."""

from dataclasses import dataclass, fields, replace

from cgi2real.archs import ARCHS, DEFAULT_ARCH
from cgi2real.classes import DEFAULT_CLASSES
from cgi2real.errors import InputError

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
# TrainConfig settings that default (None) to the arch's own: its input size and its measured recipe (archs.Arch).
ARCH_DEFAULTS = (
    "image_size", "epochs_head", "epochs_finetune", "unfreeze_from", "lr_head", "lr_finetune", "class_weight_power",
    "augment", "background_prob", "paste_prob",
)


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # labeled dataset roots (class folders), local or s3://
    out: str  # where the final model package is written, local or s3://
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


@dataclass(frozen=True)
class AdaptConfig:
    model: str  # the source model package, local or s3://
    data: tuple[str, ...]  # unlabeled target images: folders or s3:// prefixes, scanned like `label` scans
    out: str  # where the adapted model package is written, local or s3://
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


@dataclass(frozen=True)
class EvalConfig:
    model: str  # model package, local or s3://
    data: tuple[str, ...]  # labeled datasets to evaluate, each reported separately
    out: str | None = None  # report folder (report.json + confusion PNGs); None: print only
    batch_size: int = 64  # images per forward pass
    abstain_below: float | None = None  # also report accuracy and coverage when images below this confidence are left out
    geometry: str | None = None  # override the package's geometry (to compare them); None: the package's
    use_gpu: bool | None = None  # None: use a GPU when this machine has one
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS


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
    overwrite: bool = False  # delete an existing table at `out` first instead of resuming it
    force: bool = False  # break the lease of a run that died holding the table (not renewed for 2 minutes)
    rows_per_file: int = 100_000  # commit a Parquet file once this many rows are ready (~5 MB)
    commit_seconds: float = 60.0  # commit a file at least this often, so a crash loses little
    abstain_below: float | None = None  # leave images whose top probability is below this unlabeled ("low confidence")
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS


@dataclass(frozen=True)
class ReviewConfig:
    table: str  # the label table: a folder or s3:// prefix written by `cgi2real label`
    out: str  # folder (or s3:// prefix) for index.html, its thumbnails and plots
    per_class: int = 24  # thumbnails drawn at random per class
    lowest: int = 48  # least confident labeled rows shown, with every class's probability
    errors: int = 48  # error rows shown (drawn at random when there are more)
    seed: int = 0  # seed of the random draws
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS


@dataclass(frozen=True)
class SynthConfig:
    out: str  # folder or s3:// prefix; images go to out/<class>/
    per_class: int  # images per class
    size: int = 299  # square image side in px
    seed: int = 0  # image i of a class is rendered from seed * 1_000_003 + i
    classes: tuple[str, ...] = DEFAULT_CLASSES  # any of both, horse, human
    masks: bool = True  # also write figure masks to out/_masks/ (training uses them)
    scenes: str = "photo"  # photo (framed and furnished like photographs) or simple (whole figures in an open field)
    s3_endpoint: str | None = None  # S3 endpoint URL; None: AWS_ENDPOINT_URL or AWS


def from_dict(cls, values: dict):
    """Rebuild a config dataclass from asdict() output (lists back to tuples), ignoring unknown keys."""
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)
