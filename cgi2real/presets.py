"""All image preprocessing: decoding, the train and eval presets, and normalization.

Training and labeling both use these, so they cannot drift apart. A preset maps the bytes of an
image file to a uint8 tensor (3, S, S); `normalize` turns a batch of those into the model's float
input on the device, so only uint8 pixels (a quarter of the bytes) cross Ray's object store.
"""

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Larger images are refused before their pixels are decoded (a decompression bomb guard).
MAX_PIXELS = 80_000_000

# Eval resizes the short side to image_size * 342/299 before a center crop, as torchvision's
# Inception v3 weights were evaluated (342 -> 299).
RESIZE_RATIO = 342 / 299


class ImageError(ValueError):
    """An image file that cannot be turned into pixels; the message is a short reason."""


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, upright per its EXIF orientation.

    Grayscale, CMYK, palette, 16-bit and transparent images are converted (transparency onto
    white). `draft_size` lets JPEGs decode at a reduced scale whose short side stays >= it.
    Raises ImageError with a short reason for anything that is not a usable image.
    """
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"too large: {img.width}x{img.height} pixels > {MAX_PIXELS}")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"too large: more than {MAX_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else f"cannot decode: {e}"
        raise ImageError(reason.splitlines()[0]) from None


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


class EvalPreset:
    """Image bytes -> uint8 (3, S, S): resize the short side to S*342/299, center-crop S."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.resize_size = round(image_size * RESIZE_RATIO)
        self.transforms = T.Compose(
            [T.Resize(self.resize_size, antialias=True), T.CenterCrop(image_size), T.PILToTensor()]
        )

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transforms(decode_image(data, draft_size=self.resize_size))


AUGMENTATIONS = ("basic", "real")


class TrainPreset:
    """Image bytes (and an optional figure mask) -> augmented uint8 (3, S, S).

    "basic" is the reference notebook's augmentation (Keras: rotation 40 deg, shifts 0.2, shear
    0.2, zoom 0.2, horizontal flips) plus mild colour jitter. "real" aims at the CGI -> photograph
    gap: stronger colour and contrast changes, occasional grayscale, and then, after any figure
    pasting (`degrade`), the artefacts of cameras and the web that renders lack: blur, sensor
    noise and JPEG compression. With a mask, `background_prob` of the images get their background
    replaced by a random one, so that no background pattern can stand in for the class.
    """

    def __init__(self, image_size: int, augment: str = "real", background_prob: float = 0.0):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment {augment!r}: expected one of {', '.join(AUGMENTATIONS)}")
        self.image_size, self.augment, self.background_prob = image_size, augment, background_prob
        fill = tuple(round(255 * m) for m in IMAGENET_MEAN)  # out-of-image pixels: mean colour
        jitter = 0.3 if augment == "basic" else 0.45
        self.transforms = T.Compose(
            [
                # applied to the image and its mask alike; colour transforms leave masks alone
                T.RandomResizedCrop(image_size, scale=(0.64, 1.0), antialias=True),  # zoom 0.2
                T.RandomHorizontalFlip(),
                T.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=11.5, fill={Image.Image: fill, tv_tensors.Mask: 0}),
                # no hue jitter: on PIL it costs more than all the rest of this preset together
                T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
                *([T.RandomGrayscale(0.1)] if augment == "real" else []),
                T.PILToTensor(),
            ]
        )

    def __call__(self, data: bytes) -> torch.Tensor:
        pixels, _ = self.transform(data)
        return torch.from_numpy(self.degrade(pixels.numpy(), np.random.default_rng()))

    def transform(self, data: bytes, mask: bytes | None = None, rng: np.random.Generator | None = None):
        """(uint8 (3, S, S), float32 figure mask (S, S) in [0, 1] or None): everything but `degrade`."""
        image = decode_image(data, draft_size=self.image_size)
        if mask is None:
            return self.transforms(image), None
        figure = decode_mask(mask, image.size)
        pixels, figure = self.transforms(image, tv_tensors.Mask(torch.from_numpy(figure.copy())[None]))
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


def decode_mask(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """A figure mask file (8-bit PNG, 255 = figure) -> uint8 (H, W) at the image's `size` (W, H)."""
    try:
        mask = Image.open(io.BytesIO(data)).convert("L")
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"bad mask: {str(e).splitlines()[0]}") from None
    if mask.size != size:
        mask = mask.resize(size, Image.BILINEAR)
    return np.asarray(mask)


def blend(pixels: np.ndarray, other: np.ndarray, figure: np.ndarray) -> np.ndarray:
    """uint8 (3, S, S) with `figure` (S, S, in [0, 1]) kept from `pixels` and the rest from `other`."""
    mixed = pixels.astype(np.float32) * figure + other.astype(np.float32) * (1.0 - figure)
    return mixed.round().astype(np.uint8)


def random_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 (3, S, S) backdrop: a plain colour (often near-white, as in studio shots), a smooth
    random colour field, or a sky-to-ground gradient, with a little texture."""
    kind = rng.random()
    if kind < 0.3:
        colour = rng.uniform(225, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        base = np.broadcast_to(colour[:, None, None], (3, size, size)).astype(np.float32)
    elif kind < 0.65:
        cells = int(rng.integers(2, 6))
        field = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        base = np.asarray(field, np.float32).transpose(2, 0, 1)
    else:
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        horizon = rng.uniform(0.2, 0.8)
        t = np.clip((np.linspace(0, 1, size) - horizon) * rng.uniform(3, 20) + 0.5, 0, 1)
        base = (top[:, None, None] * (1 - t)[None, :, None] + bottom[:, None, None] * t[None, :, None]) * np.ones((1, 1, size))
    texture = rng.normal(0, rng.uniform(0, 12), (1, size, size))
    return (base + texture).clip(0, 255).astype(np.uint8)


def paste_figures(
    pixels: np.ndarray, labels: np.ndarray, masks: list, pairs: dict[tuple[int, int], int], prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut-and-paste mixing within a batch: copy the figure of a donor image into another image.

    pixels uint8 (B, 3, S, S); labels (B,); masks[i] a float (S, S) figure mask or None. `pairs`
    maps (recipient class, donor class) to the class of the result (horse + human -> both). Each
    image whose class is a recipient in `pairs` takes, with probability `prob`, the mirrored,
    shifted figure of a random donor of a matching class that has a mask. Returns new arrays.
    """
    pixels, labels = pixels.copy(), labels.copy()
    original = labels.copy()
    donors = {d: [j for j in range(len(labels)) if masks[j] is not None and original[j] == d] for _, d in pairs}
    size = pixels.shape[-1]
    for i in range(len(labels)):
        options = [(d, result) for (r, d), result in pairs.items() if r == original[i] and any(j != i for j in donors[d])]
        if not options or rng.random() >= prob:
            continue
        donor_class, result = options[rng.integers(len(options))]
        j = rng.choice([j for j in donors[donor_class] if j != i])
        figure, donor = masks[j], pixels[j]
        if rng.random() < 0.5:  # mirrored
            figure, donor = figure[:, ::-1], donor[:, :, ::-1]
        dy, dx = (rng.integers(-size // 4, size // 4 + 1, 2)).tolist()
        figure = _shift(figure, dy, dx)
        pixels[i] = blend(_shift(donor, dy, dx), pixels[i], figure)
        labels[i] = result
    return pixels, labels


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
