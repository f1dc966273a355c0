"""Generated benchmark images: a few rendered per class, copied under new names up to the count wanted.

Throughput does not depend on what the pictures show, and rendering thousands of 320 px scenes
would take longer than the benchmark itself.
"""

import os
import shutil

from cgi2real.classes import DEFAULT_CLASSES
from cgi2real.synth.dataset import image_name, write_dataset


def replicated_dataset(out: str, per_class: int, size: int = 320, unique: int = 40) -> str:
    """Class folders with `per_class` JPEGs each, of which `unique` are distinct renders."""
    write_dataset(out, min(unique, per_class), size=size)
    for label in DEFAULT_CLASSES:
        for i in range(unique, per_class):
            shutil.copyfile(os.path.join(out, image_name(label, i % unique)), os.path.join(out, image_name(label, i)))
    return out
