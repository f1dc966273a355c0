"""The train preset on the model's device: JPEG bytes and crop boxes in, augmented uint8 squares out.

Training with `--decode device` ships compressed bytes, not pixels, from the reading tasks to the
Ray Train workers. A reading task does what needs the file (`read_for_training`): it reads it,
draws the random crop box from the JPEG's header (`TrainPreset.sample_box`, the CPU path's own
draw) and frames the figure mask by that box; a file the device decoder cannot take (PNG, CMYK,
truncated, ...) is decoded and cropped right there by the CPU preset. The worker then does the
rest of `TrainPreset`'s recipe on a whole batch, each image with its own random parameters
(`DeviceTrainPreset`): decode, turn upright, crop and resize (bilinear with antialiasing, as
Pillow), flips, affine, colour jitter, grayscale, random backgrounds, cut-and-paste, blur, noise
and JPEG compression. The distributions are the CPU recipe's; tests/test_device_augment.py
compares them.

Where the two paths differ: the device decodes a large JPEG at full size where Pillow decodes it
at a reduced scale (`draft`), so the crop is resized from more pixels; random draws come from
numpy on the host (parameters) and torch on the device (noise), not from one stream; and the
colour-field backgrounds are upsampled by torch's bicubic, not Pillow's.
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms.functional import _get_inverse_affine_matrix

from cgi2real.imaging.gpu_eval import decode_jpegs, device_jpeg, draft_scale, fill_decoded, warn_fallback
from cgi2real.imaging.presets import MEAN_COLOUR, Backdrop, ImageError, Paste, TrainPreset, draw_backdrop, image_errors, pad_size, paste_plan

GRAY = (0.2989, 0.587, 0.114)  # torchvision's (and Pillow's) RGB -> L weights
NO_BOX = (0, 0, 0, 0)


def read_for_training(preset: TrainPreset, data: bytes, mask: bytes | None) -> tuple[bytes, int, tuple[int, ...], int, bytes]:
    """What a reading task ships for one training image: (payload, orientation, box, scale, mask).

    A JPEG the device decoder takes ships as its own bytes with its EXIF orientation (1-8), its
    crop box (left, top, right, bottom, on the upright picture as Pillow's reduced-scale decode
    `scale` gives it) and the figure mask framed by that box (uint8 S x S, or b"" without a mask).
    Any other image is cropped here by the CPU preset and ships as its uint8 (3, S, S) pixels,
    with orientation 0. Raises ImageError as the CPU path would.
    """
    header = device_jpeg(data)
    if header is None:
        with image_errors():
            pixels, figure = preset.crop(data, mask)
        return np.asarray(pixels).transpose(2, 0, 1).tobytes(), 0, NO_BOX, 1, _mask_bytes(figure)
    orientation, width, height = header
    scale = draft_scale(width, height, preset.image_size)
    upright = (-(-height // scale), -(-width // scale)) if orientation >= 5 else (-(-width // scale), -(-height // scale))
    box = preset.sample_box(*upright)
    figure = None
    if mask is not None:
        with image_errors():
            figure = preset.crop_mask(mask, box, *upright)
    return data, orientation, box, scale, _mask_bytes(figure)


def _mask_bytes(figure) -> bytes:
    return b"" if figure is None else np.asarray(figure, dtype=np.uint8).tobytes()


def upright(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as shown: the EXIF turn of `presets._upright`, as tensor views."""
    if orientation >= 5:  # 5-8 swap the axes (Pillow: TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90)
        pixels = pixels.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return pixels.flip(flips) if flips else pixels


class DeviceTrainPreset:
    """The reading stage's rows ({payload, orientation, box, scale, mask, label, error}) -> a
    training batch {image uint8 (B, 3, S, S), label, ok} on `device`, augmented as `preset` would
    be on the CPU (see the module's docstring)."""

    def __init__(self, preset: TrainPreset, device: torch.device, paste_pairs: dict | None = None, paste_prob: float = 0.0):
        self.preset, self.device = preset, device
        self.paste_pairs, self.paste_prob = paste_pairs or {}, paste_prob
        self.fill = torch.tensor(MEAN_COLOUR, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        rng = rng or np.random.default_rng()  # fresh entropy: data-parallel workers share torch's seed, not these draws
        errors = np.array(batch["error"], dtype=object)
        images = self.crops(batch, errors)
        masks, has_mask = self.masks(batch["mask"])
        ok = errors == ""
        labels = np.asarray(batch["label"], dtype=np.int64)
        images, labels = self.augment(images, masks, has_mask & ok, labels, ok, rng)
        return {
            "image": images.round_().clamp_(0, 255).to(torch.uint8),
            "label": _to(labels, self.device),
            "ok": _to(ok, self.device),
        }

    # --- decoding and cropping --------------------------------------------------------------

    def crops(self, batch: dict[str, np.ndarray], errors: np.ndarray) -> torch.Tensor:
        """float (B, 3, S, S) in [0, 255]: each row's crop; rows with an error stay zeros, and a JPEG
        that no decoder can read gets its reason in `errors`."""
        s = self.preset.image_size
        orientations = np.asarray(batch["orientation"])
        rows = np.flatnonzero(errors == "")
        out = torch.zeros((len(orientations), 3, s, s), dtype=torch.float32, device=self.device)
        jpegs = [i for i in rows if orientations[i] > 0]
        decoded = self._decode([batch["payload"][i] for i in jpegs]) if jpegs else []
        for i, pixels in zip(jpegs, decoded or []):
            out[i] = self.frame(upright(pixels, int(orientations[i])), tuple(batch["box"][i]), int(batch["scale"][i]))
        if jpegs and decoded is None:  # the batch failed: Pillow, one by one, in the box already drawn
            for i in jpegs:
                try:
                    with image_errors():
                        framed, _ = self.preset.crop(batch["payload"][i], box=tuple(int(v) for v in batch["box"][i]))
                    out[i] = torch.from_numpy(np.asarray(framed).transpose(2, 0, 1).copy()).to(self.device)
                except ImageError as e:
                    errors[i] = str(e)
        fill_decoded(out, batch, rows, orientations)
        return out

    def _decode(self, datas: list[bytes]) -> list[torch.Tensor] | None:
        try:
            return decode_jpegs(datas, self.device)
        except Exception as e:  # nvJPEG refused one of them: the caller decodes them one by one on the CPU
            warn_fallback(self.device, e)
            return None

    def frame(self, pixels: torch.Tensor, box: tuple[int, ...], scale: int) -> torch.Tensor:
        """Upright uint8 (3, H, W) at full size -> float (3, S, S): the crop `box` (drawn on the
        picture reduced `scale` times) resized as `TrainPreset.crop` frames it."""
        s = self.preset.image_size
        height, width = pixels.shape[-2:]
        left, top, right, bottom = (int(v) * scale for v in box)
        region = pixels[:, top:min(bottom, height), left:min(right, width)].float()[None]
        if self.preset.framing != "pad":
            return F.interpolate(region, size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        w, h = pad_size(region.shape[-1] / scale, region.shape[-2] / scale, s)
        out = self.fill[0].expand(3, s, s).clone()
        out[:, (s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = F.interpolate(
            region, size=(h, w), mode="bilinear", antialias=True, align_corners=False
        )[0]
        return out

    def masks(self, column) -> tuple[torch.Tensor, np.ndarray]:
        """float (B, 1, S, S) figure masks in [0, 1] (zeros where none), and which rows have one."""
        s = self.preset.image_size
        has_mask = np.array([len(m) > 0 for m in column], dtype=bool)
        masks = torch.zeros((len(column), 1, s, s), dtype=torch.float32, device=self.device)
        if has_mask.any():
            raw = np.frombuffer(b"".join(m for m in column if len(m)), dtype=np.uint8).reshape(-1, 1, s, s)
            masks[_indices(has_mask, self.device)] = _to(raw, self.device).float() / 255.0
        return masks, has_mask

    # --- the recipe, batched ---------------------------------------------------------------

    def augment(self, x, masks, has_mask, labels, ok, rng):
        """TrainPreset's steps after the crop, in its order, on float (B, 3, S, S) in [0, 255]."""
        preset = self.preset
        x, masks = flip(x, masks, rng)
        if preset.augment != "light":
            x, masks = affine(x, masks, self.fill, rng)
            x = color_jitter(x, 0.3 if preset.augment == "basic" else 0.45, rng)
        if preset.augment == "real":
            x = torch.where(_where(rng.random(len(x)) < 0.1, self.device), gray(x).expand_as(x), x)
        if preset.background_prob > 0 and has_mask.any():
            x = self.backgrounds(x, masks, has_mask, rng)
        if self.paste_prob > 0 and self.paste_pairs:
            plan = paste_plan(labels, has_mask & ok, self.paste_pairs, self.paste_prob, preset.image_size, rng)
            x, labels = paste(x, masks, labels, plan)
        if preset.augment == "real":
            x = degrade(x, preset.image_size, rng)
        return x, labels

    def backgrounds(self, x, masks, has_mask, rng):
        """`background_prob` of the masked images put on a random background (`presets.draw_backdrop`)."""
        chosen = [i for i in np.flatnonzero(has_mask) if rng.random() < self.preset.background_prob]
        if chosen:
            index = _to(np.array(chosen), self.device)
            backdrops = render_backdrops([draw_backdrop(rng) for _ in chosen], self.preset.image_size, self.device, rng)
            figures = masks[index]
            x[index] = (x[index] * figures + backdrops * (1 - figures)).round()
        return x


def render_backdrops(backdrops: list[Backdrop], size: int, device: torch.device, rng: np.random.Generator) -> torch.Tensor:
    """float (n, 3, S, S) backgrounds on `device`, as `presets.random_background` renders them
    (the colour field's bicubic is torch's, not Pillow's)."""
    out = torch.empty((len(backdrops), 3, size, size), device=device)
    t = torch.linspace(0, 1, size, device=device)
    for i, b in enumerate(backdrops):
        colours = torch.as_tensor(np.asarray(b.colours, np.float32), device=device)
        if b.kind == "plain":
            out[i] = colours.view(3, 1, 1)
        elif b.kind == "field":
            field = colours.permute(2, 0, 1)[None]  # (1, 3, cells, cells)
            out[i] = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 255).round()
        else:
            share = ((t - b.horizon) * b.steepness + 0.5).clamp(0, 1).view(1, size, 1)
            out[i] = colours[0].view(3, 1, 1) * (1 - share) + colours[1].view(3, 1, 1) * share
    grain = torch.randn((len(backdrops), 1, size, size), device=device, generator=_generator(rng, device)) * _to(np.array([b.texture for b in backdrops], np.float32), device).view(-1, 1, 1, 1)
    return (out + grain).clamp(0, 255).floor()


def _generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on `device` seeded from `rng`: the device's noise follows the batch's draws."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device` without waiting for the work queued there (small parameter arrays,
    copied through a staging buffer, so the array may go at once)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device, non_blocking=True)


def _indices(chosen: np.ndarray, device) -> torch.Tensor:
    """Integer indices of the chosen rows: indexing with them needs no device-to-host sync, a boolean mask does."""
    return _to(np.flatnonzero(chosen), device)


def _where(chosen: np.ndarray, device) -> torch.Tensor:
    return _to(np.asarray(chosen), device).view(-1, 1, 1, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luminance."""
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def flip(x, masks, rng):
    """Each image (and its mask) mirrored left-right with probability 1/2."""
    chosen = _where(rng.random(len(x)) < 0.5, x.device)
    return torch.where(chosen, x.flip(-1), x), torch.where(chosen, masks.flip(-1), masks)


def affine(x, masks, fill, rng, degrees=40.0, translate=0.2, shear=11.5):
    """RandomAffine(degrees, translate, shear) per image, nearest neighbour, `fill` outside (masks 0).

    The parameters are drawn as torchvision's RandomAffine draws them, and each image's inverse
    matrix is torchvision's; one grid_sample then moves the whole batch.
    """
    b, _, h, w = x.shape
    angles = rng.uniform(-degrees, degrees, b)
    tx, ty = np.round(rng.uniform(-translate * w, translate * w, b)), np.round(rng.uniform(-translate * h, translate * h, b))
    shears = rng.uniform(-shear, shear, b)
    theta = _to(np.array(
        [_get_inverse_affine_matrix([0.0, 0.0], float(a), [float(dx), float(dy)], 1.0, [float(sx), 0.0]) for a, dx, dy, sx in zip(angles, tx, ty, shears)],
        dtype=np.float32,
    ), x.device).view(b, 2, 3)
    # torchvision's _affine_grid: pixel-centred coordinates, the matrix rescaled to [-1, 1]
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=x.device)], dim=-1).view(1, h * w, 3)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.expand(b, -1, -1).bmm(theta.transpose(1, 2) / scale).view(b, h, w, 2)
    moved = F.grid_sample(torch.cat([x, masks, torch.ones_like(masks)], 1), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    x, masks, inside = moved[:, :3], moved[:, 3:4], moved[:, 4:5]
    return torch.where(inside < 0.5, fill, x), masks


def color_jitter(x, strength: float, rng):
    """ColorJitter(brightness, contrast, saturation = `strength`) per image, in a random order per image."""
    b = len(x)
    factors = rng.uniform(1 - strength, 1 + strength, (b, 3))
    order = np.argsort(rng.random((b, 3)), axis=1)  # a random permutation of the three per image
    for step in range(3):
        for op in range(3):  # a factor of 1 leaves an image as it is
            f = _to(np.where(order[:, step] == op, factors[:, op], 1.0).astype(np.float32), x.device).view(-1, 1, 1, 1)
            if op == 0:
                other = torch.zeros_like(x[:, :1])  # brightness: blend with black
            elif op == 1:
                other = gray(x).mean(dim=(-2, -1), keepdim=True)  # contrast: with the mean grey
            else:
                other = gray(x)  # saturation: with the image's own grey
            x = (f * x + (1 - f) * other).clamp_(0, 255)
    return x


def paste(x, masks, labels, plan: list[Paste]):
    """Apply `presets.paste_plan`'s pastes to float (B, 3, S, S), as `presets.paste_figures` does."""
    labels = labels.copy()
    for p in plan:
        figure, donor = masks[p.donor], x[p.donor]
        if p.mirrored:
            figure, donor = figure.flip(-1), donor.flip(-1)
        figure, donor = _shift(figure, p.dy, p.dx), _shift(donor, p.dy, p.dx)
        x[p.recipient] = (donor * figure + x[p.recipient] * (1 - figure)).round()
        labels[p.recipient] = p.result
    return x, labels


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the last two axes by (dy, dx), filling with zeros."""
    h, w = t.shape[-2:]
    out = torch.zeros_like(t)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = t[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def degrade(x, size: int, rng):
    """TrainPreset.degrade per image: Gaussian blur (30 %), sensor noise (30 %), JPEG (50 %)."""
    b = len(x)
    blurred = rng.random(b) < 0.3
    sigmas = rng.uniform(0.3, 1.5, b) * size / 128
    if blurred.any():
        index = _indices(blurred, x.device)
        x[index] = gaussian_blur(x[index], sigmas[blurred])
    noisy = rng.random(b) < 0.3
    if noisy.any():
        std = _to(rng.uniform(2, 10, b).astype(np.float32), x.device).view(-1, 1, 1, 1)
        mono = _where(rng.random(b) < 0.5, x.device)
        noise = torch.randn(x.shape, device=x.device, generator=_generator(rng, x.device))
        noise = torch.where(mono, noise[:, :1].expand_as(x), noise) * std
        x = torch.where(_where(noisy, x.device), (x + noise).clamp(0, 255).floor(), x)
    compressed = np.flatnonzero(rng.random(b) < 0.5)
    qualities = rng.integers(25, 90, b)
    for i in compressed:
        x[i] = _jpeg(x[i], int(qualities[i]))
    return x


def gaussian_blur(x, sigmas: np.ndarray) -> torch.Tensor:
    """Each image of (n, 3, H, W) blurred with its own sigma: one separable grouped convolution."""
    n, c, h, w = x.shape
    radius = int(np.ceil(3 * sigmas.max()))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernels = torch.exp(-0.5 * (offsets[None] / _to(sigmas.astype(np.float32), x.device)[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * 3, 2r + 1)
    planes = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    planes = F.conv2d(planes, kernels.view(n * c, 1, 1, -1), groups=n * c)
    planes = F.conv2d(planes, kernels.view(n * c, 1, -1, 1), groups=n * c)
    return planes.view(n, c, h, w)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """float (3, H, W) through JPEG compression at `quality`, on its device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its codecs deprecated in favour of TorchCodec
        data = encode_jpeg(image.round().clamp(0, 255).to(torch.uint8), quality=quality).cpu()  # the decoder reads from host memory
        return decode_jpeg([data], mode=ImageReadMode.RGB, device=image.device)[0].float()
