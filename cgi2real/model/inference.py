"""The model step of labeling: uint8 pixels on the device in, class probabilities out.

One function does the whole step (normalisation, the network under bf16 autocast on GPU, the
softmax), so that `torch.compile` fuses the uint8 -> float scaling into the first convolution's
input and the softmax into the head. A compiled step is specialised to its batch shape: batches
are padded up to one of two fixed sizes (`bucket_sizes`), so a short last batch reuses a compiled
shape instead of compiling a new one, and both shapes are compiled (and cuDNN autotuned) once, in
`warm_up`. A labeling actor warms up in the background (`warm_up(..., background=True)`): it labels
with the eager step from its first batch while a thread compiles, and switches to the compiled step
when both shapes are ready, so compiling delays no row.

Compiling is the default on GPUs only. On the 2-core CPU VM a compiled Inception v3 labeled 1.36x
as fast as eager once running (128 px), but took 85 s per actor to compile (cold compiler cache),
earned back only after about 25,000 images (BENCHMARKS.md); `--compile` turns it on there.
"""

import threading
import time
import warnings

import torch

from cgi2real.model.inputs import autocast, to_model
from cgi2real.storage.locations import first_line

SMALL_BUCKET = 8  # the short bucket is a batch_size // SMALL_BUCKET: a tail of a few images costs little


def bucket_sizes(batch_size: int) -> tuple[int, ...]:
    """The batch shapes a compiled step runs: the full batch and an eighth of it (256 -> 32, 256)."""
    return tuple(sorted({max(1, batch_size // SMALL_BUCKET), batch_size}))


def use_compile(requested: bool | None, device: torch.device) -> bool:
    """Whether to compile: as requested, else on GPUs only (see the module's note)."""
    return device.type == "cuda" if requested is None else requested


class InferenceStep:
    """uint8 (B, 3, S, S) on `device` -> float32 probabilities (B, K), the network compiled or eager.

    Compiled, or on a GPU (where cuDNN picks kernels per shape), any batch is cut into pieces of at
    most `batch_size` and each piece padded with zero images up to its bucket; eager on CPU,
    batches run as they come (padding would only cost). A compile that fails (no compiler, an unsupported op) falls back to eager with one
    warning: labeling goes on at eager speed.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, mean, std, batch_size: int, compile: bool | None = None):
        self.device, self.mean, self.std, self.batch_size = device, tuple(mean), tuple(std), batch_size
        self.model = model.eval().to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self.compiled = use_compile(compile, device)
        self.buckets = bucket_sizes(batch_size) if self.compiled or device.type == "cuda" else ()
        self.step = torch.compile(self._probabilities, dynamic=False) if self.compiled else self._probabilities
        self.warm_up_seconds = 0.0
        self.ready = threading.Event()  # set once `step` is compiled for every bucket; until then batches run eager
        if not self.compiled:
            self.ready.set()

    def _probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        images = to_model(pixels, self.device, self.mean, self.std)
        with autocast(self.device):
            logits = self.model(images)  # (B, K)
        return torch.softmax(logits.float(), dim=1)

    def warm_up(self, image_size: int, background: bool = False) -> float:
        """Run each bucket once on blank images: compiling and autotuning happen here, not on the
        first real batch. Returns the seconds it took (also kept in `warm_up_seconds`).

        With `background`, a compiled step is built in a thread instead (returning 0 at once): batches
        run eager until `ready` is set. The eager step is warmed here either way.
        """
        if background and self.compiled:
            self._warm(image_size, self._probabilities)
            threading.Thread(target=self._build, args=(image_size,), name="compile-model-step", daemon=True).start()
            return 0.0
        self._build(image_size)
        return self.warm_up_seconds

    def _build(self, image_size: int) -> None:
        """Warm `step` on every bucket (compiling it, if compiled), time it, and mark it ready."""
        start = time.perf_counter()
        try:
            self._warm(image_size, self.step)  # a failed compile falls back to eager in _run, with its warning
        finally:
            self.warm_up_seconds = time.perf_counter() - start
            self.ready.set()

    def _warm(self, image_size: int, step) -> None:
        for size in self.buckets:
            self._run(torch.zeros((size, 3, image_size, image_size), dtype=torch.uint8, device=self.device), step)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        step = self.step if self.ready.is_set() else self._probabilities
        if not self.buckets:
            return self._run(pixels, step)
        pieces = []
        for start in range(0, len(pixels), self.batch_size):
            piece = pixels[start:start + self.batch_size]
            n = len(piece)
            bucket = next(b for b in self.buckets if b >= n)
            if bucket > n:
                piece = torch.cat([piece, piece.new_zeros((bucket - n, *piece.shape[1:]))])
            pieces.append(self._run(piece, step)[:n])
        return torch.cat(pieces) if len(pieces) != 1 else pieces[0]

    @torch.inference_mode()  # only here: a piece padded under it would be an inference tensor, which compiles anew
    def _run(self, pixels: torch.Tensor, step) -> torch.Tensor:
        try:
            return step(pixels)
        except Exception as e:
            if step == self._probabilities:  # eager: a real error (bound methods compare equal, not identical)
                raise
            warnings.warn(f"torch.compile failed ({first_line(e)}); labeling on with the eager model", stacklevel=2)
            self.compiled, self.step = False, self._probabilities
            return self.step(pixels)
