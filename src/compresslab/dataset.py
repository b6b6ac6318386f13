"""Reading the prepared splits back as model input: float32 pixels in [0, 1] and integer labels.

NumPy only, so that stages which run .tflite files (LiteRT, no TensorFlow) read exactly the input the training
stages read. `prepare` (`compresslab.data`) writes what this reads.
"""

import json
from pathlib import Path

import numpy as np

from compresslab.paths import PREPARED

SPLITS = ("train", "val", "test")
PIXEL_SCALE = 1.0 / 255.0


def load_meta(prepared_dir: str | Path = PREPARED) -> dict:
    """Class names, image size, channels and pixel scale of the prepared data."""
    return json.loads((Path(prepared_dir) / "meta.json").read_text())


def load_split(name: str, prepared_dir: str | Path = PREPARED) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as model input: float32 pixels in [0, 1] and integer labels."""
    with np.load(Path(prepared_dir) / f"{name}.npz") as arrays:
        return arrays["x"].astype(np.float32) * np.float32(PIXEL_SCALE), arrays["y"]


def load_labels(name: str, prepared_dir: str | Path = PREPARED) -> np.ndarray:
    """The integer labels of one split, without decoding its images."""
    with np.load(Path(prepared_dir) / f"{name}.npz") as arrays:
        return arrays["y"]
