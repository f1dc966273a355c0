"""All image preprocessing: decoding, the train and eval presets, and normalization.

Training and labeling both use these, so they cannot drift apart. A preset maps the bytes of an
image file to a uint8 tensor (3, S, S); `normalize` turns a batch of those into the model's float
input on the device, so only uint8 pixels (a quarter of the bytes) cross Ray's object store.
"""

import contextlib
import io
from dataclasses import dataclass, replace

import numpy as np
import torch
import torchvision.transforms as transforms_v1
from PIL import Image, ImageFilter, JpegImagePlugin
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from cgi2real.core.archs import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (tests and benchmarks normalize with them)
from cgi2real.core.config import AUGMENTATIONS, DEFAULT_GEOMETRY, GEOMETRIES, choose  # crop | pad | squash: see config.GEOMETRIES

MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)  # fill outside the picture: ~0 once normalized

# Only these decoders run, whatever a file's name says: Pillow's others (TGA, PCX, TIFF, SGI, DDS,
# ICNS, ...) are legacy code that files from untrusted buckets should not reach.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

# Limits on the image as it will be decoded (a JPEG after its reduced-size draft), checked from
# the header before any pixel is decoded: a decompression-bomb guard.
MAX_PIXELS = 80_000_000
MAX_DECODED_BYTES = 4 * MAX_PIXELS  # 16-bit and alpha modes take more bytes per pixel
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}

# Eval resizes the short side to image_size * 342/299 before a center crop, as torchvision's
# Inception v3 weights were evaluated (342 -> 299).
RESIZE_RATIO = 342 / 299

_TRANSPOSE = {  # EXIF orientation -> the transposition that shows the picture upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An image file that cannot be turned into pixels; the message is a short reason."""


@contextlib.contextmanager
def image_errors():
    """Turn any failure on one image into an ImageError with a short reason.

    Decoders meet every kind of broken file (a mis-typed EXIF tag raises struct.error deep in
    Pillow), and one file must never fail a batch: it becomes that file's error row instead.
    """
    try:
        yield
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"too large: more than {MAX_PIXELS} pixels") from None
    except MemoryError:
        raise ImageError("too large: out of memory") from None
    except Exception as e:
        text = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ImageError("truncated" if "truncated" in text.lower() else f"cannot decode: {text}") from None


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, upright per its EXIF orientation.

    Grayscale, CMYK, palette, 16-bit and transparent images are converted (transparency onto
    white). `draft_size` lets JPEGs decode at a reduced scale whose short side stays >= it; the
    pixel limit applies to that reduced size. Raises ImageError with a short reason for anything
    that is not a usable image.
    """
    if not data:
        raise ImageError("empty file")
    with image_errors():
        img = _open(data)
        if draft_size and isinstance(img, JpegImagePlugin.JpegImageFile):  # MPO (camera) files too
            img.draft("RGB", (draft_size, draft_size))
        check_decoded_size(img)
        img.load()
        return _to_rgb(_upright(img))


def _open(data: bytes) -> Image.Image:
    if data[:3] == b"\xff\xd8\xff":
        # JPEGs are opened by their own factory, as Image.open would, but without its size check:
        # that one counts full-size pixels, and a draft decodes an eighth of the side.
        try:
            return JpegImagePlugin.jpeg_factory(io.BytesIO(data))
        except SyntaxError:
            raise ImageError("not an image") from None
    return Image.open(io.BytesIO(data), formats=FORMATS)


def check_decoded_size(img: Image.Image) -> None:
    """Refuse, from the header, an image whose decoded pixels would be too many or too large."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"too large: {w}x{h} pixels > {MAX_PIXELS}")
    if w * h * _BYTES_PER_PIXEL.get(img.mode, 4) > MAX_DECODED_BYTES:
        raise ImageError(f"too large: {w}x{h} {img.mode} pixels take more than {MAX_DECODED_BYTES // 2**20} MiB")


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (ImageOps.exif_transpose's table).

    Not exif_transpose itself: it re-encodes the EXIF block, and raises on tags of a type other
    than the standard's, which cameras and editors write.
    """
    method = _TRANSPOSE.get(exif_orientation(img))
    return img.transpose(method) if method is not None else img


def exif_orientation(img: Image.Image) -> int:
    """An opened image's EXIF orientation, 1 to 8; 1 when absent, out of range, or when the EXIF
    block does not parse (that is ignored, not an error)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return orientation if isinstance(orientation, int) and orientation in _TRANSPOSE else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit/float grayscale: rescale to 8 bit
        pixels = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        img = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def check_geometry(geometry: str) -> None:
    choose("--geometry", geometry, GEOMETRIES)


def frame(img: Image.Image, size: int, geometry: str, box: tuple[float, ...] | None = None, fill=MEAN_COLOUR) -> Image.Image:
    """The region `box` (left, top, right, bottom; default the whole image) as a size x size image.

    "pad" fits the region inside the square and fills the rest with `fill`; "squash" and "crop"
    stretch it over the square (crop's boxes are square already). One Pillow resize reads only the
    box, so nothing larger than the output is allocated, whatever the image's shape.
    """
    box = box or (0, 0, img.width, img.height)
    if geometry != "pad":
        return img.resize((size, size), Image.BILINEAR, box=box)
    w, h = pad_size(box[2] - box[0], box[3] - box[1], size)
    canvas = Image.new(img.mode, (size, size), fill)
    canvas.paste(img.resize((w, h), Image.BILINEAR, box=box), ((size - w) // 2, (size - h) // 2))
    return canvas


def pad_size(width: float, height: float, size: int) -> tuple[int, int]:
    """The size that a width x height picture takes inside a size x size square, for "pad"."""
    return max(1, round(width * size / max(width, height))), max(1, round(height * size / max(width, height)))


def center_crop_box(width: int, height: int, size: int, resize_size: int) -> tuple[float, float, float, float]:
    """The region that resizing the short side to `resize_size` and center-cropping `size` keeps,
    in source pixels: torchvision's Resize + CenterCrop rounding, so the pixels match theirs."""
    short, long = min(width, height), max(width, height)
    resized_long = int(resize_size * long / short)
    rw, rh = (resize_size, resized_long) if width <= height else (resized_long, resize_size)
    top, left = int(round((rh - size) / 2)), int(round((rw - size) / 2))
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


class EvalPreset:
    """Image bytes -> uint8 (3, S, S) by the geometry: center crop (short side to S*342/299 first),
    the whole picture padded to a square, or the whole picture squashed to it."""

    def __init__(self, image_size: int, geometry: str = DEFAULT_GEOMETRY):
        check_geometry(geometry)
        self.image_size, self.geometry = image_size, geometry
        self.resize_size = round(image_size * RESIZE_RATIO)

    def __call__(self, data: bytes) -> torch.Tensor:
        with image_errors():
            img = decode_image(data, draft_size=self.resize_size)
            s = self.image_size
            box = center_crop_box(img.width, img.height, s, self.resize_size) if self.geometry == "crop" else None
            return torch.from_numpy(np.asarray(frame(img, s, self.geometry, box)).transpose(2, 0, 1).copy())


class TrainPreset:
    """Image bytes (and an optional figure mask) -> augmented uint8 (3, S, S).

    "light" is the random crop and flips alone: what a model from scratch learns fastest from
    (the demo's). "basic" is the reference notebook's augmentation (Keras: rotation 40 deg, shifts 0.2, shear
    0.2, zoom 0.2, horizontal flips) plus mild colour jitter. "real" aims at the CGI -> photograph
    gap: stronger colour and contrast changes, occasional grayscale, and then, after any figure
    pasting (`degrade`), the artefacts of cameras and the web that renders lack: blur, sensor
    noise and JPEG compression. With a mask, `background_prob` of the images get their background
    replaced by a random one, so that no background pattern can stand in for the class.

    The random crop matches the eval geometry: for "crop", a near-square region (aspect 3:4 to
    4:3) stretched to the square, as torchvision's RandomResizedCrop; for "pad" and "squash", a
    region of aspect 1:2 to 2:1 brought to the square as eval brings whole photos (letterboxed or
    squashed), so the model sees in training what labeling will show it.
    """

    CROP_SCALE = (0.64, 1.0)  # share of the image's area kept: the notebook's zoom 0.2

    def __init__(self, image_size: int, augment: str = "real", background_prob: float = 0.0, geometry: str = DEFAULT_GEOMETRY):
        choose("--augment", augment, AUGMENTATIONS)
        check_geometry(geometry)
        self.image_size, self.augment, self.background_prob, self.geometry = image_size, augment, background_prob, geometry
        self.crop_ratio = (3 / 4, 4 / 3) if geometry == "crop" else (1 / 2, 2.0)
        jitter = 0.3 if augment == "basic" else 0.45
        self.transforms = T.Compose(
            [
                # applied to the image and its mask alike; colour transforms leave masks alone
                T.RandomHorizontalFlip(),
                *(
                    [
                        T.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=11.5, fill={Image.Image: MEAN_COLOUR, tv_tensors.Mask: 0}),
                        # no hue jitter: on PIL it costs more than all the rest of this preset together
                        T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
                    ]
                    if augment != "light" else []
                ),
                *([T.RandomGrayscale(0.1)] if augment == "real" else []),
                T.PILToTensor(),
            ]
        )

    def __call__(self, data: bytes) -> torch.Tensor:
        pixels, _ = self.transform(data)
        return torch.from_numpy(self.degrade(pixels.numpy(), np.random.default_rng()))

    def sample_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random crop (left, top, right, bottom) of a width x height picture: RandomResizedCrop's
        draw, on torch's RNG. The device path draws it from a JPEG's header, before any decoding."""
        shape = torch.empty(1, 1, 1).expand(1, height, width)  # only its size is read
        top, left, h, w = transforms_v1.RandomResizedCrop.get_params(shape, self.CROP_SCALE, self.crop_ratio)
        return left, top, left + w, top + h

    @property
    def framing(self) -> str:
        """How a crop box becomes the square: crop's boxes are near-square already, so stretched."""
        return "squash" if self.geometry == "crop" else self.geometry

    def crop(self, data: bytes, mask: bytes | None = None, box: tuple[int, ...] | None = None) -> tuple[Image.Image, Image.Image | None]:
        """The recipe's first, geometric step: decode, draw a crop box (unless `box` was drawn
        already), frame it (and the mask) as S x S."""
        image = decode_image(data, draft_size=self.image_size)
        box = box or self.sample_box(image.width, image.height)
        figure = self.crop_mask(mask, box, image.width, image.height) if mask is not None else None
        return frame(image, self.image_size, self.framing, box), figure

    def crop_mask(self, mask: bytes, box: tuple[int, ...], width: int, height: int) -> Image.Image:
        """The figure mask framed by the `box` of a width x height picture (a mask may be stored at another size)."""
        figure = decode_mask(mask)
        sx, sy = figure.width / width, figure.height / height
        left, top, right, bottom = box
        return frame(figure, self.image_size, self.framing, (left * sx, top * sy, right * sx, bottom * sy), fill=0)

    def transform(self, data: bytes, mask: bytes | None = None, rng: np.random.Generator | None = None):
        """(uint8 (3, S, S), float32 figure mask (S, S) in [0, 1] or None): everything but `degrade`.

        Raises ImageError, whatever went wrong with this image (see `image_errors`).
        """
        with image_errors():
            pixels, figure = self.crop(data, mask)
            if figure is None:
                return self.transforms(pixels), None
            pixels, figure = self.transforms(pixels, tv_tensors.Mask(torch.from_numpy(np.asarray(figure).copy())[None]))
            figure = figure[0].numpy().astype(np.float32) / 255.0
            rng = rng or np.random.default_rng()
            if rng.random() < self.background_prob:
                background = random_background(self.image_size, rng)
                pixels = torch.from_numpy(blend(pixels.numpy(), background, figure))
            return pixels, figure

    def degrade(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Camera and web artefacts on uint8 (3, S, S) ("real" only): blur, noise, JPEG, each at random."""
        if self.augment != "real":
            return pixels
        image = Image.fromarray(pixels.transpose(1, 2, 0))
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * self.image_size / 128))
        if rng.random() < 0.3:
            noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 10), (self.image_size, self.image_size, 1 if rng.random() < 0.5 else 3))
            image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(rng.integers(25, 90)))
            image = Image.open(buffer).convert("RGB")
        return np.asarray(image).transpose(2, 0, 1).copy()


def decode_mask(data: bytes) -> Image.Image:
    """A figure mask file (8-bit PNG, 255 = figure) -> an "L" image at its stored size."""
    try:
        with image_errors():
            mask = Image.open(io.BytesIO(data), formats=("PNG",))
            check_decoded_size(mask)
            return mask.convert("L")
    except ImageError as e:
        raise ImageError(f"bad mask: {e}") from None


def blend(pixels: np.ndarray, other: np.ndarray, figure: np.ndarray) -> np.ndarray:
    """uint8 (3, S, S) with `figure` (S, S, in [0, 1]) kept from `pixels` and the rest from `other`."""
    mixed = pixels.astype(np.float32) * figure + other.astype(np.float32) * (1.0 - figure)
    return mixed.round().astype(np.uint8)


@dataclass(frozen=True)
class Backdrop:
    """The random draws of one background (`draw_backdrop`), rendered by `random_background` here
    and by `device_augment.render_backdrops` on a device."""

    kind: str  # plain | field | gradient
    colours: np.ndarray  # plain: (3,); field: (cells, cells, 3) uint8 cell colours; gradient: (2, 3) top and bottom
    horizon: float = 0.0  # gradient: where the sky meets the ground, as a share of the height
    steepness: float = 0.0  # gradient: how sharply
    texture: float = 0.0  # the standard deviation of the grain laid over it


def draw_backdrop(rng: np.random.Generator) -> Backdrop:
    """A plain colour (often near-white, as in studio shots), a smooth random colour field, or a
    sky-to-ground gradient, with a little texture."""
    kind = rng.random()
    if kind < 0.3:
        backdrop = Backdrop("plain", rng.uniform(225, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, 3))
    elif kind < 0.65:
        cells = int(rng.integers(2, 6))
        backdrop = Backdrop("field", rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8))
    else:
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        backdrop = Backdrop("gradient", np.stack([top, bottom]), rng.uniform(0.2, 0.8), rng.uniform(3, 20))
    return replace(backdrop, texture=rng.uniform(0, 12))


def random_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 (3, S, S) backdrop drawn by `draw_backdrop`, with its grain."""
    b = draw_backdrop(rng)
    if b.kind == "plain":
        base = np.broadcast_to(b.colours[:, None, None], (3, size, size)).astype(np.float32)
    elif b.kind == "field":
        base = np.asarray(Image.fromarray(b.colours).resize((size, size), Image.BICUBIC), np.float32).transpose(2, 0, 1)
    else:
        t = np.clip((np.linspace(0, 1, size) - b.horizon) * b.steepness + 0.5, 0, 1)
        top, bottom = b.colours
        base = (top[:, None, None] * (1 - t)[None, :, None] + bottom[:, None, None] * t[None, :, None]) * np.ones((1, 1, size))
    texture = rng.normal(0, b.texture, (1, size, size))
    return (base + texture).clip(0, 255).astype(np.uint8)


def paste_figures(
    pixels: np.ndarray, labels: np.ndarray, masks: list, pairs: dict[tuple[int, int], int], prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut-and-paste mixing within a batch: copy the figure of a donor image into another image.

    pixels uint8 (B, 3, S, S); labels (B,); masks[i] a float (S, S) figure mask or None. `pairs`
    maps (recipient class, donor class) to the class of the result (horse + human -> both); which
    images get which figure is `paste_plan`'s draw. Returns new arrays.
    """
    pixels, labels = pixels.copy(), labels.copy()
    for paste in paste_plan(labels, [m is not None for m in masks], pairs, prob, pixels.shape[-1], rng):
        figure, donor = masks[paste.donor], pixels[paste.donor]
        if paste.mirrored:
            figure, donor = figure[:, ::-1], donor[:, :, ::-1]
        figure = _shift(figure, paste.dy, paste.dx)
        pixels[paste.recipient] = blend(_shift(donor, paste.dy, paste.dx), pixels[paste.recipient], figure)
        labels[paste.recipient] = paste.result
    return pixels, labels


@dataclass(frozen=True)
class Paste:
    """One figure pasted: the donor's figure, mirrored or not and shifted by (dy, dx), into the recipient."""

    recipient: int
    donor: int
    mirrored: bool
    dy: int
    dx: int
    result: int  # the recipient's class afterwards


def paste_plan(labels, has_mask: list[bool], pairs: dict[tuple[int, int], int], prob: float, size: int, rng: np.random.Generator) -> list[Paste]:
    """The pastes of a batch, in the order they apply (a later donor may carry an earlier paste).

    Each image whose class is a recipient in `pairs` takes, with probability `prob`, the mirrored
    (half the time), shifted (up to a quarter of the side) figure of a random other image of a
    matching donor class that has a mask. The CPU and device paths both apply this plan.
    """
    original = np.asarray(labels)
    donors = {d: [j for j in range(len(original)) if has_mask[j] and original[j] == d] for _, d in pairs}
    plan = []
    for i in range(len(original)):
        options = [(d, result) for (r, d), result in pairs.items() if r == original[i] and any(j != i for j in donors[d])]
        if not options or rng.random() >= prob:
            continue
        donor_class, result = options[rng.integers(len(options))]
        j = int(rng.choice([j for j in donors[donor_class] if j != i]))
        mirrored = bool(rng.random() < 0.5)
        dy, dx = (rng.integers(-size // 4, size // 4 + 1, 2)).tolist()
        plan.append(Paste(i, j, mirrored, dy, dx, result))
    return plan


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the last two axes by (dy, dx), filling with zeros (a figure may leave the frame)."""
    out = np.zeros_like(array)
    h, w = array.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = array[..., ys, xs]
    return out


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W) scaled to [0, 1] and standardized per channel."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t
