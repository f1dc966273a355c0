"""Flat 2D silhouettes of horses and people: quick class-folder images for tests and the demo.

Deterministic per seed. Each figure is a few filled shapes (body, legs, neck, head, limbs) in a
random colour, size, position and mirror, over a random two-colour gradient with clutter, so
a model has to learn the shapes rather than the colours.
"""

import random

from PIL import Image, ImageDraw

from cgi2real.classes import DEFAULT_CLASSES
from cgi2real.storage import locate


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _background(rng: random.Random, size: int) -> Image.Image:
    top, bottom = _colour(rng), _colour(rng)
    img = Image.linear_gradient("L").resize((size, size))
    img = Image.composite(Image.new("RGB", (size, size), bottom), Image.new("RGB", (size, size), top), img)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randrange(2, 6)):  # clutter: boxes and blobs that are neither figure
        x, y, w, h = (rng.uniform(0, size) for _ in range(4))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w / 6, y + h / 6], fill=_colour(rng))
    return img


def _horse(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float, flip: bool) -> None:
    """A horse about 2s wide around (cx, cy): barrel body, four legs, neck, head, tail."""
    colour = _colour(rng)
    d = -1 if flip else 1
    X = lambda dx: cx + d * dx * s  # noqa: E731 - mirrored x in body units
    draw.ellipse([cx - s, cy - 0.35 * s, cx + s, cy + 0.35 * s], fill=colour)  # body
    for dx in (-0.75, -0.5, 0.5, 0.75):  # legs
        knee = rng.uniform(-0.1, 0.1)
        draw.line([X(dx), cy + 0.2 * s, X(dx + knee), cy + 0.7 * s, X(dx), cy + 1.1 * s], fill=colour, width=max(3, int(0.16 * s)))
    draw.polygon([(X(0.6), cy - 0.2 * s), (X(0.85), cy - 0.2 * s), (X(1.25), cy - 0.9 * s), (X(1.05), cy - 1.0 * s)], fill=colour)  # neck
    draw.ellipse([min(X(1.0), X(1.55)), cy - 1.1 * s, max(X(1.0), X(1.55)), cy - 0.8 * s], fill=colour)  # head
    draw.polygon([(X(1.1), cy - 1.05 * s), (X(1.15), cy - 1.25 * s), (X(1.22), cy - 1.02 * s)], fill=colour)  # ear
    draw.line([X(-0.95), cy - 0.15 * s, X(-1.25), cy + 0.5 * s], fill=colour, width=max(3, int(0.12 * s)))  # tail


def _human(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    """An upright person about 2s tall around (cx, cy): head, torso, arms, legs."""
    skin, clothes = _colour(rng), _colour(rng)
    limb = max(3, int(0.18 * s))
    draw.ellipse([cx - 0.15 * s, cy - 1.0 * s, cx + 0.15 * s, cy - 0.68 * s], fill=skin)  # head
    draw.rectangle([cx - 0.2 * s, cy - 0.65 * s, cx + 0.2 * s, cy + 0.1 * s], fill=clothes)  # torso
    for side in (-1, 1):
        hand = (cx + side * rng.uniform(0.3, 0.6) * s, cy + rng.uniform(-0.5, 0.2) * s)
        draw.line([cx + side * 0.2 * s, cy - 0.6 * s, *hand], fill=clothes, width=limb)  # arm
        draw.line([cx + side * 0.1 * s, cy + 0.1 * s, cx + side * rng.uniform(0.1, 0.35) * s, cy + 1.0 * s], fill=clothes, width=limb)  # leg


def render(label: str, seed: int, size: int = 128) -> Image.Image:
    """One image of `label` ("horse", "human" or "both"); the same seed gives the same image."""
    if label not in DEFAULT_CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {DEFAULT_CLASSES}")
    rng = random.Random(f"{label}-{seed}")
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    s = size * rng.uniform(0.18, 0.25)
    if label in ("horse", "both"):
        _horse(draw, rng, size * rng.uniform(0.35, 0.6), size * rng.uniform(0.45, 0.6), s, rng.random() < 0.5)
    if label in ("human", "both"):
        x = size * (rng.uniform(0.7, 0.85) if label == "both" else rng.uniform(0.35, 0.65))
        _human(draw, rng, x, size * rng.uniform(0.45, 0.55), s * rng.uniform(0.8, 1.1))
    return img


def write_dataset(out: str, per_class: int, size: int = 128, seed: int = 0, classes=DEFAULT_CLASSES, s3_endpoint: str | None = None) -> int:
    """Write `per_class` JPEGs per class into out/<class>/; return how many were written."""
    import io

    root = locate(out, s3_endpoint)
    for label in classes:
        for i in range(per_class):
            buffer = io.BytesIO()
            render(label, seed * 1_000_003 + i, size).save(buffer, "JPEG", quality=90)
            root.child(label, f"{label}_{i:05d}.jpg").write_bytes(buffer.getvalue())
    return per_class * len(classes)
