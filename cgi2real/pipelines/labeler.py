"""The model replica of a labeling run: a batch of read images in, class probabilities out.

Plain torch: Ray Data runs `Labeler` as a pool of actors (through `labeling.LabelerActor`, so the
driver never imports torch), tests call it directly.
"""

import time

import numpy as np
import torch

from cgi2real.core.config import CPU_BATCH_SIZE, DECODES, GPU_BATCH_SIZE, choose
from cgi2real.imaging.gpu_eval import DevicePreset
from cgi2real.model.inference import InferenceStep
from cgi2real.model.networks import package_from_bytes
from cgi2real.runtime.cluster import node_cpus


class Labeler:
    """Model replica: a batch of read images -> {path, probs (B, K), error, labeled_at}.

    With `decode="cpu"` the batch is {path, image uint8 (B, 3, S, S), error}, as the reading tasks
    preprocessed it. With `decode="device"` it is {path, payload, orientation, error} from
    `data.read_for_device`: JPEG bytes are decoded in one batch on the model's device and framed
    there (`DevicePreset`); if that batch fails, its JPEGs are decoded one by one by the CPU preset,
    which gives each file its usual pixels or error row.

    Plain torch (Ray Data runs it as a pool of actors; tests call it directly). The model is built
    once, from the package's safetensors bytes (or an ObjectRef to them), and its step
    (`InferenceStep`: compiled on GPUs) warmed up before the first batch; with `compile_in_background`
    (the pipeline's actors) the first batches run eager while the compiled step is built. Rows with
    an error pass through with NaN probabilities.
    """

    def __init__(self, config: dict, weights, use_gpu: bool = False, actors_per_node: int | None = None, decode: str = "cpu",
                 batch_size: int | None = None, compile: bool | None = None, package_uri: str = "(given as bytes)",
                 compile_in_background: bool = False):
        if not isinstance(weights, bytes):  # an ObjectRef: one copy in the object store serves every actor
            import ray

            weights = ray.get(weights)
        choose("--decode", decode, DECODES)
        package = package_from_bytes(config, weights, package_uri)  # InputError if they do not fit its network
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if self.device.type == "cpu" and actors_per_node:
            # Ray sets one thread per reserved CPU; share this node's cores (not the driver's) instead.
            torch.set_num_threads(max(1, node_cpus() // actors_per_node))
        batch_size = batch_size or (GPU_BATCH_SIZE if use_gpu else CPU_BATCH_SIZE)
        self.step = InferenceStep(package.model, self.device, package.mean, package.std, batch_size, compile)
        # compiled and autotuned before the first batch, or (in the pipeline's actors) while the first batches run eager
        self.step.warm_up(package.image_size, background=compile_in_background)
        self.num_classes = len(package.classes)
        self.decode = decode
        if decode == "device":
            self.device_preset = DevicePreset(package.eval_preset(), self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.array(batch["error"], dtype=object)  # device decoding may add some
        pixels = self.device_preset.batch(batch, errors) if self.decode == "device" else None
        ok = errors == ""
        probs = np.full((len(ok), self.num_classes), np.nan, dtype=np.float32)
        if ok.any():
            if pixels is None:
                pixels = torch.from_numpy(batch["image"][ok]).to(self.device, non_blocking=True)
            else:
                pixels = pixels[torch.from_numpy(np.flatnonzero(ok)).to(self.device)]  # integer indices: no device sync
            probs[ok] = self.step(pixels).cpu().numpy()
        now_us = int(time.time() * 1e6)
        return {"path": batch["path"], "probs": probs, "error": errors, "labeled_at": np.full(len(ok), now_us, dtype=np.int64)}
