"""The model's device at run time: bf16 autocast on GPU, and batches moved there as model input.

Training, adaptation, evaluation and the labeling actors share these; they live apart from
`runtime.py`, which a labeling driver imports without torch.
"""

import torch

from cgi2real.presets import normalize


def model_input(batch: dict, device: torch.device, mean, std) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch -> (normalized images, labels, ok mask) on `device`; channels_last on GPU."""
    images = normalize(batch["image"].to(device, non_blocking=True), mean, std)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = batch["label"].to(device, non_blocking=True).long()
    mask = batch["ok"].to(device, non_blocking=True).bool()
    return images, labels, mask


def autocast(device: torch.device):
    """bf16 autocast on GPU; a no-op on CPU (bf16 matmuls are slow on most CPUs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
