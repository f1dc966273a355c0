"""Inception v3 for transfer learning, and model packages (safetensors + config.json).

A model package is a folder, local or s3://, holding `model.safetensors` (the unwrapped state
dict) and `config.json` (architecture, classes in order, image size, mean/std, training summary).
`package.py` reads and checks those files without torch; this module builds and saves the
network. Loading never unpickles anything.
"""

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

import cgi2real
from cgi2real.errors import InputError
from cgi2real.package import ARCH, CONFIG_FILE, PACKAGE_FORMAT, PACKAGE_VERSION, WEIGHTS_FILE, PackageInfo, check_weights, read_model_package
from cgi2real.presets import IMAGENET_MEAN, IMAGENET_STD, EvalPreset
from cgi2real.config import DEFAULT_UNFREEZE_FROM
from cgi2real.storage import first_line, locate

MIN_IMAGE_SIZE = 75  # Inception v3's smallest input
AUX_IMAGE_SIZE = 299  # its auxiliary head needs full-size input (17x17 maps at Mixed_6e)
HEAD_MODULES = ("fc", "AuxLogits.fc")  # the new layers; everything else is the backbone
# Top-level blocks of torchvision's Inception v3 in forward order (AuxLogits branches off Mixed_6e).
BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "AuxLogits",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool", "dropout", "fc",
)


def check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise InputError(f"image size {image_size} is too small: Inception v3 needs at least {MIN_IMAGE_SIZE} px")


def build_model(num_classes: int, image_size: int, weights: str = "none", imagenet: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Inception v3 with a new `num_classes` head; `weights` is "imagenet" or "none".

    The auxiliary head is kept only at image_size >= 299, where its 17x17 feature maps exist.
    ImageNet weights expect torchvision's `transform_input` (they were trained on [-1, 1] input);
    `imagenet` is their state dict if already read (default: from the torch cache or a download).
    """
    check_image_size(image_size)
    aux = image_size >= AUX_IMAGE_SIZE
    if weights == "none":
        model = torchvision.models.inception_v3(
            weights=None, aux_logits=aux, transform_input=False, init_weights=True, num_classes=num_classes
        )
        # torchvision draws every layer with std 0.1, which puts the first logits near +-10 (loss ~3
        # for 3 classes); zero classifiers start at uniform predictions (loss ln K) and learn faster.
        for fc in (model.fc, *([model.AuxLogits.fc] if aux else [])):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        return model
    if weights != "imagenet":
        raise InputError(f"weights {weights!r}: expected imagenet, none or a model package")
    model = torchvision.models.inception_v3(aux_logits=True, transform_input=True, init_weights=False)
    model.load_state_dict(imagenet if imagenet is not None else imagenet_state_dict())
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if aux:
        model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
    else:
        model.aux_logits, model.AuxLogits = False, None
    return model


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 Inception v3 weights, from the torch cache or a download."""
    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a network that drops packets must not hang the download
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, HTTPError, socket errors: all mean "not obtainable here"
        home = os.environ.get("TORCH_HOME", "~/.cache/torch")
        raise InputError(
            f"cannot load ImageNet weights ({first_line(e)}): they are not in the torch cache under "
            f"TORCH_HOME={home} and cannot be downloaded; put {os.path.basename(weights.url)} in "
            "$TORCH_HOME/hub/checkpoints or use --weights none|PACKAGE"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


# --- Freezing stages -------------------------------------------------------------------------


def check_unfreeze_from(block: str) -> None:
    if block not in BLOCKS:
        raise InputError(f"unknown block {block!r} to unfreeze from; choose one of {', '.join(BLOCKS)}")


def set_trainable(model: nn.Module, stage: str, unfreeze_from: str = DEFAULT_UNFREEZE_FROM) -> int:
    """Freeze the model for a training stage; return the number of trainable parameters.

    "head": only the new classifier layers train. "finetune": every block from `unfreeze_from`
    on (in forward order; the aux head branches off Mixed_6e and counts as after it) also trains.
    """
    check_unfreeze_from(unfreeze_from)
    if stage not in ("head", "finetune"):
        raise ValueError(f"unknown stage {stage!r}")
    trainable_blocks = set(BLOCKS[BLOCKS.index(unfreeze_from):]) if stage == "finetune" else set()
    for name, param in model.named_parameters():
        block = name.split(".", 1)[0]
        param.requires_grad = block in trainable_blocks or name.rsplit(".", 1)[0] in HEAD_MODULES
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except BatchNorm layers with frozen weights keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


# --- Model packages --------------------------------------------------------------------------


@dataclass
class ModelPackage(PackageInfo):
    """A loaded model package: its config.json (PackageInfo) and the model (eval mode, CPU)."""

    model: nn.Module

    def eval_preset(self) -> EvalPreset:
        return EvalPreset(self.image_size, self.geometry)


def package_config(model: nn.Module, classes: list[str], image_size: int, geometry: str, training: dict | None = None) -> dict:
    """The config.json of a package for `model` (weights_sha256 is added when it is saved)."""
    return {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_VERSION,
        "arch": ARCH,
        "classes": list(classes),
        "image_size": image_size,
        "geometry": geometry,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "aux_logits": bool(getattr(model, "aux_logits", False)),
        "transform_input": bool(getattr(model, "transform_input", False)),
        "training": training or {},
    }


def save_model_package(
    state_dict: dict[str, torch.Tensor], config: dict, uri: str, s3_endpoint: str | None = None
) -> dict:
    """Write a model package to a local folder or s3:// prefix; return the config as written.

    `state_dict` is the unwrapped model's (no DDP `module.` prefix). The config gains the weights'
    SHA-256, the creation time and the cgi2real version.
    """
    assert not any(k.startswith("module.") for k in state_dict), "save the unwrapped model"
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    config = {
        **config,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cgi2real_version": cgi2real.__version__,
    }
    folder = locate(uri, s3_endpoint)
    try:
        folder.child(WEIGHTS_FILE).write_bytes(weights)
        folder.child(CONFIG_FILE).write_bytes(json.dumps(config, indent=2).encode())
    except OSError as e:
        raise InputError(f"cannot write model package to {folder.uri}: {first_line(e)}") from None
    return config


def load_model_package(uri: str, s3_endpoint: str | None = None, classes: list[str] | None = None) -> ModelPackage:
    """Load a model package; refuse missing files, tampered or mismatched weights, other classes."""
    config, weights = read_model_package(uri, s3_endpoint)
    where = locate(uri, s3_endpoint).uri
    if classes is not None and list(classes) != config["classes"]:
        raise InputError(f"model package {where} has classes {config['classes']}, expected {list(classes)}")
    return package_from_bytes(config, weights, where)


def package_from_bytes(config: dict, weights: bytes, where: str) -> ModelPackage:
    """Build a package's model from its safetensors bytes (no pickle), checking hash, names and shapes.

    Model actors call this with bytes shipped through Ray's object store, so a package on the
    driver's local disk serves a whole cluster.
    """
    check_weights(config, weights, where)
    try:
        state_dict = load_safetensors(weights)
    except (SafetensorError, ValueError) as e:
        raise InputError(f"model package {where}: {WEIGHTS_FILE} is not a safetensors file ({first_line(e)})") from None
    model = torchvision.models.inception_v3(
        weights=None,
        num_classes=len(config["classes"]),
        aux_logits=config["aux_logits"],
        transform_input=config["transform_input"],
        init_weights=False,
    )
    check_state_dict(model, state_dict, f"model package {where}")
    model.load_state_dict(state_dict)
    return ModelPackage(config, model.eval())


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise InputError naming the first missing, unexpected or mis-shaped tensor."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(ignore)}
    given = {k: v.shape for k, v in state_dict.items() if not k.startswith(ignore)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise InputError(f"{what}: weights do not fit the architecture ({detail}; {len(missing)} missing, {len(unexpected)} unexpected)")
    for key, shape in expected.items():
        if given[key] != shape:
            raise InputError(f"{what}: {key!r} has shape {list(given[key])}, expected {list(shape)}")


def read_starting_weights(weights: str, s3_endpoint: str | None = None) -> tuple[dict | None, bytes | None]:
    """What training starts from, read and checked once, on the driver: (package config or None,
    safetensors bytes, or None for "none"). Workers get the bytes through Ray's object store, so
    nothing is fetched again per worker and a package on the driver's disk serves a whole cluster."""
    if weights == "none":
        return None, None
    if weights == "imagenet":
        return None, save_safetensors({k: v.contiguous() for k, v in imagenet_state_dict().items()})
    config, data = read_model_package(weights, s3_endpoint)
    package_from_bytes(config, data, locate(weights, s3_endpoint).uri)  # refuse a bad package here, not in a worker
    return config, data


def initial_model(weights: str, classes: list[str], image_size: int, data: bytes | None = None, config: dict | None = None) -> nn.Module:
    """The model training starts from: ImageNet, random ("none"), or a package's weights.

    `data` and `config` are what `read_starting_weights(weights)` returned. A package trained on
    other classes lends its backbone; the new heads start fresh then.
    """
    if weights in ("imagenet", "none"):
        return build_model(len(classes), image_size, weights, load_safetensors(data) if weights == "imagenet" else None)
    package = package_from_bytes(config, data, weights)
    model = build_model(len(classes), image_size, "none")
    model.transform_input = package.config["transform_input"]
    source = package.model.state_dict()
    keep_head = package.classes == list(classes)
    skip = () if keep_head else HEAD_MODULES
    if not model.aux_logits or not package.config["aux_logits"]:
        skip = (*skip, "AuxLogits")
    state = {k: v for k, v in source.items() if not k.startswith(skip)}
    check_state_dict(model, state, f"weights {weights}", ignore=skip)
    model.load_state_dict(state, strict=False)
    return model
