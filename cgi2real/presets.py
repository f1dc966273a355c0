"""All image preprocessing: decoding, the train and eval presets, and normalization.

Training and labeling both use these, so they cannot drift apart. A preset maps the bytes of an
image file to a uint8 tensor (3, S, S); `normalize` turns a batch of those into the model's float
input on the device, so only uint8 pixels (a quarter of the bytes) cross Ray's object store.
"""

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
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


class TrainPreset:
    """Image bytes -> uint8 (3, S, S) with the augmentation of the reference notebook.

    The notebook (Keras) used rotation 40 deg, shifts 0.2, shear 0.2, zoom 0.2 and horizontal
    flips; colour jitter is added because CGI colours are cleaner than photographs'.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size
        fill = tuple(round(255 * m) for m in IMAGENET_MEAN)  # out-of-image pixels: mean colour
        self.transforms = T.Compose(
            [
                T.RandomResizedCrop(image_size, scale=(0.64, 1.0), antialias=True),  # zoom 0.2
                T.RandomHorizontalFlip(),
                T.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=11.5, fill=fill),
                # no hue jitter: on PIL it costs more than all the rest of this preset together
                T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
                T.PILToTensor(),
            ]
        )

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transforms(decode_image(data, draft_size=self.image_size))


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W) scaled to [0, 1] and standardized per channel."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t
