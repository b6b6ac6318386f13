"""The image-folder data set: reading `data/raw`, validating it, the stratified, seeded split of its files, and
writing each split as bounded TFRecord shards (`dataset` describes the format and reads it back).

Memory stays bounded whatever the data set's size: the split is decided on file names and labels, then images
are decoded, written and forgotten `BATCH` at a time.
"""

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from compresslab.data.shards import LABEL_BYTES, PIXEL_SCALE, SPLITS, file_md5, shard_name
from compresslab.errors import UserError
from compresslab.settings import DEFAULT_IMAGES_PER_SHARD, DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
CHANNEL_MODES = {1: "L", 3: "RGB"}  # data.channels (settings.CHANNELS) to PIL's image modes
BATCH = 256                         # images decoded and written at a time


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


def list_labelled(raw_dir: Path, max_per_class: int | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every image file, its integer label (the class folder's position in sorted order) and the class names."""
    files = list_images(raw_dir, max_per_class)
    paths = [path for class_paths in files.values() for path in class_paths]
    labels = np.concatenate([np.full(len(class_paths), k, np.int64) for k, class_paths in enumerate(files.values())])
    return paths, labels, list(files)


def split_indices(labels: np.ndarray, n_classes: int, val_fraction: float, test_fraction: float,
                  seed: int, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test positions. Raises UserError when a split cannot hold every class
    (named from `class_names` when given)."""
    n = len(labels)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if round(n * fraction) < n_classes:
            raise UserError(f"the {name} split would hold {round(n * fraction)} of {n} images, fewer than the "
                            f"{n_classes} classes: raise data.{name}_fraction or add images")
    min_count = int(np.bincount(labels, minlength=n_classes).min())
    if min_count < 3:
        raise UserError(f"a class has only {min_count} image(s); every split needs one of each class: "
                        f"give each class at least 3 images")
    counts = np.bincount(labels, minlength=n_classes)
    names = list(class_names) if class_names is not None else list(range(n_classes))
    fix = "add images to it, or change data.val_fraction / data.test_fraction"
    index = np.arange(n)
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    try:
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                      stratify=labels[rest], random_state=seed)
    except ValueError:
        # scikit-learn rounds the test split up, so a 3-image class can give two to it and keep one for train
        # and val, which the second stratified split refuses.
        left = np.bincount(labels[rest], minlength=n_classes)
        smallest = int(np.argmin(left))
        raise UserError(f"class {names[smallest]!r} has {counts[smallest]} images, too few to give each of "
                        f"train, val and test one in a stratified split: {fix}") from None
    positions = dict(zip(SPLITS, (train, val, test)))
    for split, held in positions.items():
        missing = [names[k] for k in range(n_classes) if not np.any(labels[held] == k)]
        if missing:
            raise UserError(f"the stratified split gives the {split} split no image of class(es) {missing} "
                            f"({', '.join(str(counts[names.index(m)]) for m in missing)} image(s)): {fix}")
    return positions


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one image file to uint8 (size, size, channels); raises OSError/UnidentifiedImageError if corrupt."""
    with Image.open(path) as image:
        image = image.convert(CHANNEL_MODES[channels]).resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array.reshape(size, size, channels)


@dataclass
class Decoded:
    """What decoding found: the files that could not be decoded, and how many files were tried."""

    skipped: list[str] = field(default_factory=list)
    tried: int = 0


def decode_batches(paths: list[Path], labels: np.ndarray, size: int, channels: int,
                   found: Decoded) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, labels) `BATCH` files at a time, in the given order; undecodable files are skipped and
    recorded in `found`."""
    for start in range(0, len(paths), BATCH):
        images, kept = [], []
        for path, label in zip(paths[start:start + BATCH], labels[start:start + BATCH]):
            found.tried += 1
            try:
                images.append(decode_image(path, size, channels))
                kept.append(label)
            except (OSError, UnidentifiedImageError, ValueError):
                found.skipped.append(str(path))
        if images:
            yield np.stack(images), np.asarray(kept, np.int64)


@dataclass(frozen=True)
class Encoding:
    """How one task's examples become records, and what meta.json and labels.npz say about a split.

    `encode(image, target)` gives one record's bytes; `summarise(split, targets)` gives that split's meta.json
    entries after "images" and "shards", and its labels.npz arrays. `head` holds meta.json keys written first
    (classification has none, so its meta.json stays as it always was).
    """

    record: str
    encode: Callable[[np.ndarray, object], bytes]
    summarise: Callable[[str, list], tuple[dict, dict[str, np.ndarray]]]
    head: dict = field(default_factory=dict)


def classification_encoding(n_classes: int) -> Encoding:
    """Records of an 8-byte little-endian label then the pixels; class counts per split; labels.npz[split]."""
    def summarise(name: str, targets: list) -> tuple[dict, dict[str, np.ndarray]]:
        labels = np.asarray(targets, np.int64)
        return {"class_counts": np.bincount(labels, minlength=n_classes).tolist()}, {name: labels}

    return Encoding(record=f"label int64 little-endian ({LABEL_BYTES} bytes), then uint8 pixels (image_size, "
                           f"image_size, channels)",
                    encode=lambda image, label: struct.pack("<q", int(label)) + np.ascontiguousarray(
                        image, np.uint8).tobytes(),
                    summarise=summarise)


def write_prepared(out_dir: Path, splits: Mapping[str, Iterable[tuple[np.ndarray, Sequence]]],
                   class_names: list[str], *, image_size: int, channels: int,
                   images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
                   accept: Callable[[dict], None] | None = None, encoding: Encoding | None = None) -> dict:
    """Write each split's (uint8 images, targets) batches of (image_size, image_size, channels) as GZIP TFRecord
    shards of at most `images_per_shard` images, with labels.npz and meta.json (see `shards`). `encoding` says
    what a target is (default: an integer label, `classification_encoding`; detection: `prepare_detection`).

    Everything is written into `<out_dir>.partial` and renamed over `out_dir` only when complete, so a failure
    or Ctrl-C never leaves a mix of old and new shards, and `accept(meta)` (raising a UserError to refuse) is
    asked before anything already in `out_dir` is replaced. Returns meta.json's content.
    """
    import tensorflow as tf  # only here: TFRecordWriter; every other reader of the shards stays TensorFlow-free

    per_shard = int(images_per_shard)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    encoding = encoding or classification_encoding(len(class_names))
    meta = {**encoding.head, "class_names": class_names, "image_size": image_size, "channels": channels,
            "pixel_scale": PIXEL_SCALE, "record": encoding.record, "splits": {}}
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    all_labels = {}
    try:
        for name, batches in splits.items():
            # Shards are named <split>-<i>-of-<n>; n is known at the end, so they are renamed then.
            written, targets, writer, count = [], [], None, 0
            for x, y in batches:
                for image, target in zip(x, y):
                    if writer is None or count == per_shard:
                        if writer is not None:
                            writer.close()
                        written.append({"file": f"{name}-{len(written):05d}.tmp", "images": 0})
                        writer, count = tf.io.TFRecordWriter(str(partial / written[-1]["file"]), options), 0
                    writer.write(encoding.encode(image, target))
                    written[-1]["images"] += 1
                    count += 1
                    targets.append(target)
            if writer is not None:
                writer.close()
            for index, shard in enumerate(written):
                final = shard_name(name, index, len(written))
                (partial / shard["file"]).rename(partial / final)
                shard.update(file=final, bytes=(partial / final).stat().st_size, md5=file_md5(partial / final))
            statistics, arrays = encoding.summarise(name, targets)
            all_labels.update(arrays)
            meta["splits"][name] = {"images": len(targets), "shards": written, **statistics}
        np.savez_compressed(partial / "labels.npz", **all_labels)
        (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if accept is not None:
            accept(meta)
        for path in partial.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(out_dir, ignore_errors=True)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return meta


def prepare(raw_dir: Path, out_dir: Path, cfg: DataConfig) -> dict:
    """Read, split and write the data set `cfg` (the `data` group) describes; returns the prepare metrics.

    Labels come from folder names, so the split is decided before any image is decoded; images are then
    decoded in split order, `BATCH` at a time. Undecodable files are skipped from their split (with a
    warning) up to `data.max_bad_share`.
    """
    paths, labels, class_names = list_labelled(raw_dir, cfg.max_images_per_class)
    positions = split_indices(labels, len(class_names), cfg.val_fraction, cfg.test_fraction, cfg.seed, class_names)
    found = Decoded()
    batches = {name: decode_batches([paths[i] for i in index], labels[index], cfg.image_size, cfg.channels, found)
               for name, index in positions.items()}
    meta = write_prepared(out_dir, batches, class_names, image_size=cfg.image_size, channels=cfg.channels,
                          images_per_shard=cfg.images_per_shard,
                          accept=lambda meta: check_decoded(found, raw_dir, cfg.max_bad_share, class_names, meta))
    counts = {name: dict(zip(class_names, split["class_counts"])) for name, split in meta["splits"].items()}
    return {"images": {name: split["images"] for name, split in meta["splits"].items()}, "classes": counts,
            "skipped_files": len(found.skipped)}


def check_skipped(found: Decoded, raw_dir: Path, max_bad_share: float) -> None:
    """Warn about files that could not be decoded; raise a UserError when more than `max_bad_share` were."""
    if found.skipped:
        share = len(found.skipped) / found.tried
        print(f"warning: skipped {len(found.skipped)} of {found.tried} image files that could not be decoded "
              f"(first: {found.skipped[0]})")
        if share > max_bad_share:
            raise UserError(f"{len(found.skipped)} of {found.tried} images ({share:.1%}) in {raw_dir} could not be "
                            f"decoded, more than data.max_bad_share={max_bad_share}: remove or replace the corrupt "
                            f"files")


def check_decoded(found: Decoded, raw_dir: Path, max_bad_share: float, class_names: list[str], meta: dict) -> None:
    """Warn about skipped files; raise a UserError when too many were, or when a class or split lost all of one
    class."""
    check_skipped(found, raw_dir, max_bad_share)
    totals = np.sum([split["class_counts"] for split in meta["splits"].values()], axis=0)
    empty = [name for name, count in zip(class_names, totals) if count == 0]
    if empty:
        raise UserError(f"class folders {empty} hold no readable image: add images or remove the folders")
    for name, split in meta["splits"].items():
        missing = [cls for cls, count in zip(class_names, split["class_counts"]) if count == 0]
        if missing:
            raise UserError(f"the {name} split holds no readable image of {missing}: replace the corrupt files "
                            f"or add images")
