"""The image-folder data set: reading `data/raw`, validating it, and the stratified, seeded splits that
`prepare` writes (compact uint8 arrays, a quarter of the size of float32, plus `meta.json`). Reading them
back as model input is `dataset`'s job.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from compresslab.dataset import PIXEL_SCALE, SPLITS
from compresslab.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
CHANNEL_MODES = {1: "L", 3: "RGB"}


@dataclass
class ImageFolder:
    """Decoded images of a folder data set, resized and channel-converted, with integer labels."""

    x: np.ndarray  # uint8, (N, size, size, channels)
    y: np.ndarray  # int64, (N,)
    class_names: list[str]
    skipped: list[str]  # files that could not be decoded


def validate_data_config(cfg: Mapping) -> None:
    """Check the `data` config group before any image is read."""
    size = cfg["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise UserError(f"data.image_size must be an integer of at least 8, got {size!r}")
    if cfg["channels"] not in CHANNEL_MODES:
        raise UserError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {cfg['channels']!r}")
    for key in ("val_fraction", "test_fraction"):
        if not 0 < cfg[key] < 1:
            raise UserError(f"data.{key} must lie strictly between 0 and 1, got {cfg[key]!r}")
    if cfg["val_fraction"] + cfg["test_fraction"] >= 1:
        raise UserError("data.val_fraction + data.test_fraction must be below 1 to leave images for training")
    if not 0 <= cfg["max_bad_share"] < 1:
        raise UserError(f"data.max_bad_share must lie in [0, 1), got {cfg['max_bad_share']!r}")
    limit = cfg.get("max_images_per_class")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"data.max_images_per_class must be a positive integer or null, got {limit!r}")


def list_images(raw_dir: Path, max_per_class: int | None = None) -> dict[str, list[Path]]:
    """Map each class folder to its image files (sorted, so every run reads the same files in the same order).

    Raises UserError for a missing or empty folder, fewer than two classes, or a class without images.
    """
    hint = "put one sub-folder of images per class there (or run `compresslab sample-data` for the sample)"
    if not raw_dir.is_dir():
        raise UserError(f"data folder {raw_dir} does not exist: {hint}")
    class_dirs = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"data folder {raw_dir} has no class sub-folders: {hint}")
    if len(class_dirs) < 2:
        raise UserError(f"data folder {raw_dir} has one class ({class_dirs[0].name}); a classifier needs at "
                        f"least two: add a sub-folder of images for each other class")
    files = {}
    for class_dir in class_dirs:
        images = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                            f"add images or remove the folder")
        files[class_dir.name] = images[:max_per_class] if max_per_class else images
    return files


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image file to uint8 (size, size, channels); raises OSError/UnidentifiedImageError if corrupt."""
    with Image.open(path) as image:
        image = image.convert(CHANNEL_MODES[channels]).resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array.reshape(size, size, channels)


def read_image_folder(raw_dir: Path, size: int, channels: int, max_bad_share: float,
                      max_per_class: int | None = None) -> ImageFolder:
    """Read every image of a class-per-folder data set; skip corrupt files, fail if too many are corrupt."""
    files = list_images(raw_dir, max_per_class)
    images, labels, skipped = [], [], []
    total = sum(len(paths) for paths in files.values())
    for label, (class_name, paths) in enumerate(files.items()):
        for path in paths:
            try:
                images.append(decode_image(path, size, channels))
                labels.append(label)
            except (OSError, UnidentifiedImageError, ValueError):
                skipped.append(str(path))
    if skipped:
        share = len(skipped) / total
        print(f"warning: skipped {len(skipped)} of {total} image files that could not be decoded "
              f"(first: {skipped[0]})")
        if share > max_bad_share:
            raise UserError(f"{len(skipped)} of {total} images ({share:.1%}) in {raw_dir} could not be decoded, "
                            f"more than data.max_bad_share={max_bad_share}: remove or replace the corrupt files")
    counts = np.bincount(labels, minlength=len(files))
    empty = [name for name, count in zip(files, counts) if count == 0]
    if empty:
        raise UserError(f"class folders {empty} hold no readable image: add images or remove the folders")
    return ImageFolder(np.stack(images), np.asarray(labels, dtype=np.int64), list(files), skipped)


def split(folder: ImageFolder, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Stratified, seeded train/val/test split. Raises UserError when a split cannot hold every class."""
    n_classes = len(folder.class_names)
    n = len(folder.y)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if round(n * fraction) < n_classes:
            raise UserError(f"the {name} split would hold {round(n * fraction)} of {n} images, fewer than the "
                            f"{n_classes} classes: raise data.{name}_fraction or add images")
    min_count = int(np.bincount(folder.y).min())
    if min_count < 3:
        raise UserError(f"a class has only {min_count} image(s); every split needs one of each class: "
                        f"give each class at least 3 images")
    index = np.arange(n)
    rest, test = train_test_split(index, test_size=test_fraction, stratify=folder.y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                  stratify=folder.y[rest], random_state=seed)
    return {name: (folder.x[idx], folder.y[idx]) for name, idx in zip(SPLITS, (train, val, test))}


def save_prepared(out_dir: Path, splits: dict, class_names: list[str], cfg: Mapping) -> None:
    """Write each split as a compressed .npz and meta.json (class names, input shape, pixel scale)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        np.savez_compressed(out_dir / f"{name}.npz", x=x, y=y)
    meta = {"class_names": class_names, "image_size": cfg["image_size"], "channels": cfg["channels"],
            "pixel_scale": PIXEL_SCALE}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def class_counts(splits: dict, class_names: list[str]) -> dict:
    """{split: {class name: count}}: the prepare stage's DVC metrics."""
    return {name: {cls: int(c) for cls, c in zip(class_names, np.bincount(y, minlength=len(class_names)))}
            for name, (_, y) in splits.items()}
