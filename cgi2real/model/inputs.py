"""The model's device at run time: bf16 autocast on GPU, and batches moved there as model input.

Training, adaptation, evaluation and the labeling actors share these; they live apart from
`runtime/`, which a labeling driver imports without torch.
"""

import torch

from cgi2real.imaging.presets import normalize


def to_model(images: torch.Tensor, device: torch.device, mean, std) -> torch.Tensor:
    """uint8 images (B, 3, S, S) on `device` -> the model's normalized input; channels_last on GPU."""
    images = normalize(images, mean, std)
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def model_input(batch: dict, device: torch.device, mean, std) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch -> (normalized images, labels, ok mask) on `device`; channels_last on GPU."""
    images = to_model(batch["image"].to(device, non_blocking=True), device, mean, std)
    labels = batch["label"].to(device, non_blocking=True).long()
    mask = batch["ok"].to(device, non_blocking=True).bool()
    return images, labels, mask


def forward(model: torch.nn.Module, batch: dict, device: torch.device, mean, std):
    """(model output, labels, ok mask) of a batch: its images through `model` under `autocast`."""
    images, labels, mask = model_input(batch, device, mean, std)
    with autocast(device):
        return model(images), labels, mask


def autocast(device: torch.device):
    """bf16 autocast on GPU; a no-op on CPU (bf16 matmuls are slow on most CPUs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
