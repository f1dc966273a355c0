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
The three steps are folded into two matrices per stored size and orientation (`_make_plan`), so
each picture costs two small matrix products. A picture that is not reduced comes out within a
level or two of the CPU preset's pixels (JPEG decoders and rounding); reduced ones within a few.
"""

import io
import warnings
from dataclasses import dataclass, replace

import torch
from PIL import JpegImagePlugin

from cgi2real.presets import MAX_PIXELS, MEAN_COLOUR, RESIZE_RATIO, center_crop_box, check_geometry, exif_orientation

# Components of a JPEG that libjpeg would read as RGB rather than YCbCr: decoders disagree there.
_RGB_COMPONENT_IDS = (ord("R"), ord("G"), ord("B"))
PLANS_KEPT = 256  # framing plans kept per actor, by stored size and orientation


def device_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1-8) of a JPEG the device decoder can take as it is, or None.

    None means: decode this file on the CPU (not a JPEG, not 8-bit YCbCr or grayscale, too large,
    perhaps truncated, or anything Pillow's header parsing rejects). Reads headers only.
    """
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
    return orientation


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> RGB uint8 (3, H, W) tensors on `device`, in one batched call.

    Raises if any of them fails: the caller decodes that batch on the CPU instead.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its decoders deprecated in favour of TorchCodec
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


def _pillow_weights(in_size: int, in0: float, in1: float, out_size: int) -> tuple[torch.Tensor, int]:
    """Pillow's bilinear resampling weights from source span [in0, in1) to `out_size` pixels.

    Returns (weights (out_size, n), first): output pixel i is sum_j weights[i, j] * source[first + j].
    This is Pillow's `precompute_coeffs` (support widened by the scale when shrinking, each row
    normalized), with its 8-bit fixed-point rounding of the coefficients.
    """
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    centers = in0 + (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = max(0, int(centers[0].item() - support + 0.5))
    last = min(in_size, int(centers[-1].item() + support + 0.5))
    sources = torch.arange(first, last, dtype=torch.float64)
    weights = (1.0 - ((sources[None, :] - centers[:, None] + 0.5) / filterscale).abs()).clamp(min=0.0)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    precision = float(1 << 22)  # Pillow's PRECISION_BITS for 8-bit images
    weights = torch.floor(weights * precision + 0.5) / precision
    return weights.float(), first


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


def _pool(length: int, scale: int) -> torch.Tensor:
    """(ceil(length / scale), length): averages of `scale` neighbours, as a reduced-scale decode."""
    reduced = -(-length // scale)
    block = torch.arange(length) // scale
    pool = (block[None, :] == torch.arange(reduced)[:, None]).double()
    return pool / pool.sum(dim=1, keepdim=True)


def _dense(length: int, in0: float, in1: float, out_size: int) -> torch.Tensor:
    weights, first = _pillow_weights(length, in0, in1, out_size)
    dense = torch.zeros((out_size, length), dtype=torch.float64)
    dense[:, first:first + weights.shape[1]] = weights.double()
    return dense


def _band(matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The columns of `matrix` that are not all zero, and the first one's index."""
    used = torch.nonzero(matrix.abs().sum(dim=0) > 0).flatten()
    first, last = int(used[0]), int(used[-1]) + 1
    return matrix[:, first:last].float().contiguous(), first


def _make_plan(height: int, width: int, orientation: int, size: int, resize_size: int, geometry: str) -> _Plan:
    """The `_Plan` of a stored height x width picture with EXIF `orientation`.

    Folds into two matrices what the CPU preset does in steps: the reduced-scale decode (block
    averages), the EXIF turn (a transpose and reversed columns), and Pillow's resize of the
    geometry's box.
    """
    scale = draft_scale(width, height, resize_size)
    pool_rows, pool_cols = _pool(height, scale), _pool(width, scale)
    transpose = orientation in (5, 6, 7, 8)
    up_height, up_width = (pool_cols.shape[0], pool_rows.shape[0]) if transpose else (pool_rows.shape[0], pool_cols.shape[0])
    if geometry == "crop":
        left, top, right, bottom = center_crop_box(up_width, up_height, size, resize_size)
        out_w = out_h = size
    else:
        left, top, right, bottom = 0, 0, up_width, up_height
        out_w = out_h = size
        if geometry == "pad":
            out_w = max(1, round(up_width * size / max(up_width, up_height)))
            out_h = max(1, round(up_height * size / max(up_width, up_height)))
    along_rows = _dense(up_height, top, bottom, out_h)  # (out_h, up_height)
    along_cols = _dense(up_width, left, right, out_w)  # (out_w, up_width)
    # Which upright axes run backwards over the stored picture (Pillow's transposes of presets._upright).
    reverse_rows, reverse_cols = {2: (False, True), 3: (True, True), 4: (True, False), 5: (False, False),
                                  6: (False, True), 7: (True, True), 8: (True, False)}.get(orientation, (False, False))
    if reverse_rows:
        along_rows = along_rows.flip(1)
    if reverse_cols:
        along_cols = along_cols.flip(1)
    if transpose:  # upright rows run along stored columns
        stored_rows, stored_cols = along_cols @ pool_rows, along_rows @ pool_cols
    else:
        stored_rows, stored_cols = along_rows @ pool_rows, along_cols @ pool_cols
    rows, row0 = _band(stored_rows)
    cols, col0 = _band(stored_cols)
    return _Plan(rows, row0, cols, col0, transpose, (size - out_h) // 2, (size - out_w) // 2)


class _Plans:
    """The plans of the last PLANS_KEPT sizes seen, their matrices on the device (about 1 MB each
    at 299 px): a bucket's common photo sizes cost their matrices once."""

    def __init__(self, device: torch.device):
        self.device, self.cache = device, {}

    def __call__(self, *key) -> _Plan:
        found = self.cache.get(key)
        if found is None:
            plan = _make_plan(*key)
            found = self.cache[key] = replace(plan, rows=plan.rows.to(self.device), cols=plan.cols.to(self.device))
            if len(self.cache) > PLANS_KEPT:
                self.cache.pop(next(iter(self.cache)))
        return found


class DevicePreset:
    """JPEG bytes -> the eval preset's uint8 (B, 3, S, S) on a device, by the package's geometry."""

    def __init__(self, image_size: int, geometry: str, device: torch.device):
        check_geometry(geometry)
        self.image_size, self.geometry, self.device = image_size, geometry, device
        self.resize_size = round(image_size * RESIZE_RATIO)
        self.plans = _Plans(device)
        self.fill = torch.tensor(MEAN_COLOUR, dtype=torch.uint8, device=device).view(3, 1, 1)

    def __call__(self, datas: list[bytes], orientations: list[int]) -> torch.Tensor:
        """JPEG bytes (as `device_orientation` admitted them) -> uint8 (B, 3, S, S) on the device.

        Raises if the batched decode fails (see `decode_jpegs`).
        """
        s = self.image_size
        out = torch.empty((len(datas), 3, s, s), dtype=torch.uint8, device=self.device)
        if self.geometry == "pad":
            out[:] = self.fill
        for i, (pixels, orientation) in enumerate(zip(decode_jpegs(datas, self.device), orientations)):
            height, width = pixels.shape[-2:]
            plan = self.plans(height, width, orientation, s, self.resize_size, self.geometry)
            band = pixels[:, plan.row0:plan.row0 + plan.rows.shape[1], plan.col0:plan.col0 + plan.cols.shape[1]].float()
            framed = plan.rows @ (band @ plan.cols.T)  # (3, p, q)
            if plan.transpose:
                framed = framed.transpose(-2, -1)
            out[i, :, plan.top:plan.top + framed.shape[-2], plan.left:plan.left + framed.shape[-1]] = framed.round_()
        return out


def draft_scale(width: int, height: int, size: int) -> int:
    """The reduction Pillow's `JpegImageFile.draft("RGB", (size, size))` picks for a width x height JPEG."""
    scale = min(width // size, height // size)
    return next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)
