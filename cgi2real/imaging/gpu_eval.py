"""The eval preset on the model's device: JPEG bytes in, the model's uint8 squares out.

Labeling with `--decode device` ships compressed bytes, not pixels, from the reading tasks to the
model actor, which decodes them in batches there (nvJPEG on a GPU; libjpeg-turbo through
torchvision on CPU, where the same code runs in tests) and brings each picture to the model's
square with the geometry of `presets.EvalPreset`:

- the reading task keeps only JPEGs the device decoder can take (`device_orientation`): 8-bit
  YCbCr or grayscale, within the pixel limit, ending in their end-of-image marker. Anything else
  (PNG, WebP, CMYK, 12-bit, truncated, ...) is decoded there by the CPU preset as before, with the
  same error rows;
- the EXIF orientation is read on the CPU by the CPU path's own code, and applied here;
- the CPU preset decodes large JPEGs at a reduced scale (Pillow's `draft`), which the device
  decoders cannot: block averages stand in for it;
- resizing uses Pillow's own bilinear weights (its `precompute_coeffs`).
The three steps are folded into two matrices per stored size and orientation (`_make_plan`), and
the pictures of a batch that share them are framed together: two batched matrix products per
stored size, whatever the number of pictures. A picture that is not reduced comes out within a
level or two of the CPU preset's pixels (JPEG decoders and rounding); reduced ones within a few.
"""

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import JpegImagePlugin
from torchvision.io import ImageReadMode, decode_jpeg

from cgi2real.imaging.presets import MAX_PIXELS, MEAN_COLOUR, EvalPreset, ImageError, center_crop_box, exif_orientation, pad_size
from cgi2real.storage.locations import first_line

# Components of a JPEG that libjpeg would read as RGB rather than YCbCr: decoders disagree there.
_RGB_COMPONENT_IDS = (ord("R"), ord("G"), ord("B"))
# Stored pixel values framed in one launch on a GPU, in float32 (1 GiB): a group of large pictures
# goes in chunks. A CPU has no launches to save, and frames one picture at a time, in its caches:
# groups of 768 x 1024 pictures framed 0.67-0.87x as fast there (bench/framing.py, BENCHMARKS.md).
FRAMED_VALUES = {"cuda": 1 << 28, "cpu": 0}
PLANS_KEPT = 512  # framing plans kept per actor (LRU), by stored size and orientation: about 1 MB each at 299 px


def device_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1-8) of a JPEG the device decoder can take as it is, or None.

    None means: decode this file on the CPU (not a JPEG, not 8-bit YCbCr or grayscale, too large,
    perhaps truncated, or anything Pillow's header parsing rejects). Reads headers only.
    """
    header = device_jpeg(data)
    return header[0] if header else None


def device_jpeg(data: bytes) -> tuple[int, int, int] | None:
    """(EXIF orientation 1-8, stored width, stored height) of a JPEG the device decoder can take, or
    None (see `device_orientation`)."""
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or cut short: the CPU decoder says which, as it always has
    try:
        img = JpegImagePlugin.jpeg_factory(io.BytesIO(data))
        width, height = img.size
        if img.mode not in ("RGB", "L") or getattr(img, "bits", 8) != 8 or width * height > MAX_PIXELS:
            return None
        if img.mode == "RGB" and (img.info.get("adobe_transform") == 0 or tuple(c[0] for c in img.layer) == _RGB_COMPONENT_IDS):
            return None
        orientation = exif_orientation(img)  # read as the CPU path reads it
    except Exception:  # whatever Pillow makes of a broken header, the CPU decoder reports it
        return None
    return orientation, width, height


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> RGB uint8 (3, H, W) tensors on `device`, in one batched call.

    Raises if any of them fails: the caller decodes that batch on the CPU instead.
    """
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its decoders deprecated in favour of TorchCodec
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


_fell_back = False  # said once per process


def warn_fallback(device: torch.device, error: Exception) -> None:
    """Say, once per process, that a batch failed to decode on `device` and goes one by one to the CPU."""
    global _fell_back
    if not _fell_back:
        _fell_back = True
        print(f"warning: a batch failed to decode on {device.type} ({first_line(error)}); "
              "decoding its JPEGs one by one on the CPU (said once per process)", flush=True)


def _pillow_weights(in_size: int, in0: float, in1: float, out_size: int) -> tuple[np.ndarray, int]:
    """Pillow's bilinear resampling weights from source span [in0, in1) to `out_size` pixels.

    Returns (weights (out_size, n), first): output pixel i is sum_j weights[i, j] * source[first + j].
    This is Pillow's `precompute_coeffs` (support widened by the scale when shrinking, each row
    normalized), with its 8-bit fixed-point rounding of the coefficients. Each output pixel has
    only a few taps: they are computed as (out_size, taps) and scattered into the band, in numpy
    (a plan per picture size is built on the CPU, where small torch ops cost far more).
    """
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    centers = in0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    low = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # Pillow's xmin and xmax, per output pixel
    high = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    sources = low[:, None] + np.arange(int(np.ceil(2 * support)) + 2)[None, :]
    taps = np.clip(1.0 - np.abs((sources - centers[:, None] + 0.5) / filterscale), 0.0, None)
    taps[sources >= high[:, None]] = 0.0
    taps /= np.maximum(taps.sum(axis=1, keepdims=True), 1e-12)
    precision = float(1 << 22)  # Pillow's PRECISION_BITS for 8-bit images
    taps = np.floor(taps * precision + 0.5) / precision
    first, last = int(low[0]), int(high[-1])
    weights = np.zeros((out_size, last - first), dtype=np.float32)
    used = taps > 0
    weights[np.nonzero(used)[0], sources[used] - first] = taps[used]
    return weights, first


@dataclass(frozen=True)
class _Axis:
    """One axis of a plan: output pixel i is sum_j weights[i, j // scale] * stored[first + j], for
    j < width. The weights are per reduced pixel (already divided by its block's size), so the
    matrix is `scale` times narrower than the stored band until `expand` spreads it."""

    weights: np.ndarray  # (out, n) float32
    first: int  # first stored pixel of the band
    width: int  # stored pixels in the band
    scale: int

    def expand(self, device: torch.device) -> torch.Tensor:
        """The (out, width) matrix on `device` (spread there: it is `scale` times larger)."""
        return torch.from_numpy(self.weights).to(device, non_blocking=True).repeat_interleave(self.scale, dim=1)[:, : self.width].contiguous()


@dataclass(frozen=True)
class _Plan:
    """How one stored picture becomes the model's square: out = rows @ X @ cols.T (X the stored
    pixels' band [row0:, col0:]), transposed if `transpose`, placed at (top, left) in the square."""

    rows: torch.Tensor  # (p, band of stored rows)
    row0: int
    cols: torch.Tensor  # (q, band of stored columns)
    col0: int
    transpose: bool
    top: int
    left: int


def _axis(length: int, scale: int, in0: float, in1: float, out_size: int, reverse: bool) -> _Axis:
    """The map from `length` stored pixels to `out_size` output pixels along one axis.

    The stored axis is reduced by averages of `scale` neighbours (the reduced-scale decode), read
    backwards if `reverse` (the EXIF turn), then resized from [in0, in1) by Pillow's weights. Only
    the band of stored pixels that is used is kept.
    """
    reduced = -(-length // scale)
    weights, first = _pillow_weights(reduced, in0, in1, out_size)  # on the reduced, upright axis
    if reverse:  # upright index j is stored (reduced) index reduced - 1 - j
        weights, first = weights[:, ::-1], reduced - first - weights.shape[1]
    counts = np.full(weights.shape[1], float(scale), dtype=np.float32)
    if first + weights.shape[1] == reduced:
        counts[-1] = length - (reduced - 1) * scale  # the last block may be short
    width = min(length - first * scale, weights.shape[1] * scale)
    return _Axis(np.ascontiguousarray(weights / counts, dtype=np.float32), first * scale, width, scale)


def _make_plan(height: int, width: int, orientation: int, size: int, resize_size: int, geometry: str) -> tuple:
    """The plan of a stored height x width picture with EXIF `orientation`: (rows `_Axis`, columns
    `_Axis`, transpose?, top, left), which `_Plans` turns into a `_Plan` on the device.

    Folds into two matrices what the CPU preset does in steps: the reduced-scale decode (block
    averages), the EXIF turn (a transpose and reversed axes), and Pillow's resize of the
    geometry's box.
    """
    scale = draft_scale(width, height, resize_size)
    transpose = orientation in (5, 6, 7, 8)
    reduced_height, reduced_width = -(-height // scale), -(-width // scale)
    up_height, up_width = (reduced_width, reduced_height) if transpose else (reduced_height, reduced_width)
    out_w = out_h = size
    if geometry == "crop":
        left, top, right, bottom = center_crop_box(up_width, up_height, size, resize_size)
    else:
        left, top, right, bottom = 0, 0, up_width, up_height
        if geometry == "pad":
            out_w, out_h = pad_size(up_width, up_height, size)
    # Which upright axes run backwards over the stored picture (Pillow's transposes of presets._upright).
    reverse_rows, reverse_cols = {2: (False, True), 3: (True, True), 4: (True, False), 6: (False, True),
                                  7: (True, True), 8: (True, False)}.get(orientation, (False, False))
    if transpose:  # upright rows run along stored columns, upright columns along stored rows
        rows, cols = _axis(height, scale, left, right, out_w, reverse_cols), _axis(width, scale, top, bottom, out_h, reverse_rows)
    else:
        rows, cols = _axis(height, scale, top, bottom, out_h, reverse_rows), _axis(width, scale, left, right, out_w, reverse_cols)
    return rows, cols, transpose, (size - out_h) // 2, (size - out_w) // 2


class _Plans:
    """The plans of the PLANS_KEPT sizes used last, their matrices on the device: a bucket's
    common photo sizes cost their matrices once."""

    def __init__(self, device: torch.device):
        self.device, self.cache = device, {}

    def __call__(self, *key) -> _Plan:
        found = self.cache.get(key)
        if found is None:
            rows, cols, transpose, top, left = _make_plan(*key)
            found = self.cache[key] = _Plan(rows.expand(self.device), rows.first, cols.expand(self.device), cols.first, transpose, top, left)
            if len(self.cache) > PLANS_KEPT:
                self.cache.pop(next(iter(self.cache)))  # the least recently used
        else:
            self.cache[key] = self.cache.pop(key)  # most recently used last
        return found


def fill_decoded(out: torch.Tensor, batch: dict, rows, orientations: np.ndarray) -> None:
    """Put the payloads of `rows` that the reading tasks decoded already (orientation 0: uint8
    (3, S, S) pixels as bytes) into those rows of `out` (B, 3, S, S), on its device and dtype."""
    decoded = [i for i in rows if orientations[i] == 0]
    if decoded:
        s = out.shape[-1]
        raw = np.frombuffer(b"".join(batch["payload"][i] for i in decoded), dtype=np.uint8).reshape(len(decoded), 3, s, s)
        out[decoded] = torch.from_numpy(raw.copy()).to(out.device, non_blocking=True).to(out.dtype)


class DevicePreset:
    """JPEG bytes -> the uint8 (B, 3, S, S) that `preset` (an EvalPreset) makes, on a device."""

    def __init__(self, preset: EvalPreset, device: torch.device):
        self.image_size, self.geometry, self.resize_size, self.device = preset.image_size, preset.geometry, preset.resize_size, device
        self.cpu_preset = preset
        self.plans = _Plans(device)
        self.framed_values = FRAMED_VALUES.get(device.type, 0)
        self.fill = torch.tensor(MEAN_COLOUR, dtype=torch.uint8, device=device).view(3, 1, 1)

    def batch(self, batch: dict[str, np.ndarray], errors: np.ndarray) -> torch.Tensor:
        """The reading stage's rows ({payload, orientation}, see `data.read_for_device`) -> uint8
        (B, 3, S, S) on the device; rows with an error stay zeros.

        JPEGs are decoded in one batch here. If that batch fails, its JPEGs are decoded one by one
        by the CPU preset, which gives each file its usual pixels or its reason in `errors`.
        """
        s = self.image_size
        orientations = np.asarray(batch["orientation"])
        rows = np.flatnonzero(errors == "")
        jpegs = [i for i in rows if orientations[i] > 0]
        out = torch.zeros((len(orientations), 3, s, s), dtype=torch.uint8, device=self.device)
        if jpegs:
            try:
                out[jpegs] = self([batch["payload"][i] for i in jpegs], [int(orientations[i]) for i in jpegs])
            except Exception as e:  # nvJPEG refused one of them (arithmetic coding, a corrupt scan, ...): one by one on CPU
                warn_fallback(self.device, e)
                for i in jpegs:
                    try:
                        out[i] = self.cpu_preset(batch["payload"][i]).to(self.device)
                    except ImageError as error:
                        errors[i] = str(error)
        fill_decoded(out, batch, rows, orientations)
        return out

    def __call__(self, datas: list[bytes], orientations: list[int]) -> torch.Tensor:
        """JPEG bytes (as `device_orientation` admitted them) -> uint8 (B, 3, S, S) on the device.

        Pictures of the same stored size and orientation share a plan, and are framed together:
        two batched matrix products per group (`frame_group`), not per picture. Raises if the
        batched decode fails (see `decode_jpegs`).
        """
        return self.frame(decode_jpegs(datas, self.device), orientations)

    def frame(self, pictures: list[torch.Tensor], orientations: list[int]) -> torch.Tensor:
        """Decoded stored pictures, uint8 (3, H, W) on the device, with their EXIF orientations ->
        the model's uint8 (B, 3, S, S), one group of the same stored size and orientation at a time."""
        s = self.image_size
        out = torch.empty((len(pictures), 3, s, s), dtype=torch.uint8, device=self.device)
        if self.geometry == "pad":
            out[:] = self.fill
        groups: dict[tuple, list[int]] = {}
        for i, (pixels, orientation) in enumerate(zip(pictures, orientations)):
            groups.setdefault((*pixels.shape[-2:], orientation), []).append(i)
        for (height, width, orientation), members in groups.items():
            plan = self.plans(height, width, orientation, s, self.resize_size, self.geometry)
            step = max(1, self.framed_values // (3 * plan.rows.shape[1] * plan.cols.shape[1]))
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                framed = frame_group([pictures[i] for i in chunk], plan)
                rows = slice(chunk[0], chunk[-1] + 1) if chunk[-1] - chunk[0] == len(chunk) - 1 else torch.tensor(chunk, device=self.device)
                out[rows, :, plan.top:plan.top + framed.shape[-2], plan.left:plan.left + framed.shape[-1]] = framed
        return out


def frame_group(pictures: list[torch.Tensor], plan: _Plan) -> torch.Tensor:
    """Decoded pictures (3, H, W) that share `plan` -> their framed uint8 (G, 3, p, q), in two
    batched matrix products (the product order that costs fewer multiplications first)."""
    band = torch.stack([p[:, plan.row0:plan.row0 + plan.rows.shape[1], plan.col0:plan.col0 + plan.cols.shape[1]] for p in pictures]).float()
    (p, h), (q, w) = plan.rows.shape, plan.cols.shape
    if h * w * q + p * h * q <= p * h * w + p * w * q:
        framed = plan.rows @ (band @ plan.cols.T)  # (G, 3, h, q), then (G, 3, p, q)
    else:
        framed = (plan.rows @ band) @ plan.cols.T  # (G, 3, p, w), then (G, 3, p, q)
    if plan.transpose:
        framed = framed.transpose(-2, -1)
    return framed.round_().to(torch.uint8)


def draft_scale(width: int, height: int, size: int) -> int:
    """The reduction Pillow's `JpegImageFile.draft("RGB", (size, size))` picks for a width x height JPEG."""
    scale = min(width // size, height // size)
    return next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)
