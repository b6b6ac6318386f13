"""The detection data set: reading `data/raw` as a Pascal VOC or COCO folder, validating every annotation, a
seeded split stratified as well as boxes allow, and writing each split as bounded TFRecord shards (`shards`
describes the records and reads them back; `prepare.write_prepared` writes them for both tasks).

    prepare_detection(Path("data/raw"), Path("data/prepared"), cfg)   # cfg: the `data` group, format voc|coco

Memory stays bounded as for classification: annotations (small) are read and checked first, the split is
decided on them, then images are decoded, resized, written and forgotten `prepare.BATCH` at a time.
"""

import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError
from sklearn.model_selection import train_test_split

from compresslab.data.annotations import Annotated, class_names
from compresslab.data.coco import read_coco
from compresslab.data.prepare import BATCH, Decoded, Encoding, check_skipped, decode_image, write_prepared
from compresslab.data.shards import BOX_BYTES, BOX_COLUMNS, COUNT_BYTES, SPLITS
from compresslab.data.voc import read_voc
from compresslab.errors import UserError

FORMATS = ("voc", "coco")
MIN_STRATUM = 3  # images a stratum needs to give each of train, val and test one


def read_annotations(raw_dir: Path, fmt: str = "voc",
                     classes: Sequence[str] | None = None) -> tuple[list[Annotated], list[str]]:
    """Every annotated image of `raw_dir` (sorted by file name) and the class names, all checked.

    Raises:
        UserError: an unknown format, a bad annotation (see `voc`, `coco`), or a data set without objects.
    """
    if classes is not None:
        classes = list(classes)
        repeated = sorted({name for name in classes if classes.count(name) > 1})
        if repeated or not classes:
            raise UserError(f"data.classes {classes} " + (f"lists {repeated} twice" if repeated else "is empty")
                            + ": list each class once, or set it to null to take the names from the annotations")
    if fmt == "voc":
        records = read_voc(raw_dir, classes)
        names = class_names(records, classes)
    elif fmt == "coco":
        records, names = read_coco(raw_dir, classes)
    else:
        raise UserError(f"data.format={fmt!r} is not a detection format: use one of {list(FORMATS)}")
    if not records:
        raise UserError(f"the {fmt.upper()} folder {raw_dir} annotates no image: add images and annotations")
    if not any(record.boxes for record in records):
        raise UserError(f"the {fmt.upper()} folder {raw_dir} annotates no object in its {len(records)} images: a "
                        f"detector needs boxes to learn from; add <object>s / annotations")
    return records, names


def strata(rows: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Each image's stratum: its most frequent class (the lowest id on a tie), or `n_classes` when it is empty."""
    return np.asarray([np.bincount(r[:, 0].astype(np.int64), minlength=n_classes).argmax() if len(r) else n_classes
                       for r in rows], np.int64)


def split_detection(groups: np.ndarray, val_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, np.ndarray]:
    """Seeded train/val/test positions, stratified by `groups` (see `strata`) as well as they allow.

    Strata of fewer than MIN_STRATUM images are pooled into one; when scikit-learn still cannot stratify (a
    split smaller than the number of strata), the split is a plain seeded one, with a printed note.
    """
    n = len(groups)
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        if round(n * fraction) < 1 or n - round(n * val_fraction) - round(n * test_fraction) < 1:
            raise UserError(f"{n} images cannot give the train, val and test splits one image each with "
                            f"data.{name}_fraction={fraction}: add images or change data.val_fraction / "
                            f"data.test_fraction")
    sizes = np.bincount(groups)
    pooled = np.where(sizes[groups] < MIN_STRATUM, -1, groups)
    index = np.arange(n)
    try:
        rest, test = train_test_split(index, test_size=test_fraction, stratify=pooled, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=pooled[rest],
                                      random_state=seed)
    except ValueError as err:
        # Too few images per stratum for this many strata: a plain split still keeps every split non-empty.
        print(f"note: the detection split is not stratified ({err}); it is a plain seeded split")
        rest, test = train_test_split(index, test_size=test_fraction, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed)
    return dict(zip(SPLITS, (train, val, test)))


def detection_encoding(class_names: Sequence[str]) -> Encoding:
    """Records of the box count (int64), the box rows (float32), then the pixels; per split: objects per class,
    images without a box, boxes; labels.npz `<split>_counts` and `<split>_boxes` (see `shards`)."""
    n_classes = len(class_names)

    def encode(image: np.ndarray, rows: np.ndarray) -> bytes:
        rows = np.ascontiguousarray(rows, "<f4").reshape(-1, BOX_COLUMNS)
        return struct.pack("<q", len(rows)) + rows.tobytes() + np.ascontiguousarray(image, np.uint8).tobytes()

    def summarise(name: str, targets: list) -> tuple[dict, dict[str, np.ndarray]]:
        counts = np.asarray([len(rows) for rows in targets], np.int64)
        boxes = (np.concatenate(targets).astype(np.float32) if targets else
                 np.zeros((0, BOX_COLUMNS), np.float32)).reshape(-1, BOX_COLUMNS)
        statistics = {"class_counts": np.bincount(boxes[:, 0].astype(np.int64), minlength=n_classes).tolist(),
                      "empty_images": int(np.sum(counts == 0)), "boxes": int(len(boxes))}
        return statistics, {f"{name}_counts": counts, f"{name}_boxes": boxes}

    return Encoding(record=f"box count n int64 little-endian ({COUNT_BYTES} bytes), then n rows of float32 "
                           f"little-endian (class_id, ymin, xmin, ymax, xmax; corners as fractions of the image "
                           f"side; {BOX_BYTES} bytes a row), then uint8 pixels (image_size, image_size, channels)",
                    encode=encode, summarise=summarise, head={"task": "detection"})


def decode_batches(records: Sequence[Annotated], rows: Sequence[np.ndarray], size: int, channels: int,
                   found: Decoded) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(uint8 images, box rows) `BATCH` images at a time, in the given order; an undecodable image is skipped
    with its boxes and recorded in `found`."""
    for start in range(0, len(records), BATCH):
        images, kept = [], []
        for record, boxes in zip(records[start:start + BATCH], rows[start:start + BATCH]):
            found.tried += 1
            try:
                images.append(decode_image(record.image, size, channels))
                kept.append(boxes)
            except (OSError, UnidentifiedImageError, ValueError):
                found.skipped.append(str(record.image))
        if images:
            yield np.stack(images), kept


def prepare_detection(raw_dir: Path, out_dir: Path, cfg) -> dict:
    """Read, check, split and write the detection data set `cfg` (the `data` group) describes.

    Args:
        raw_dir: the VOC or COCO folder (`cfg.format`, default "voc").
        out_dir: where the shards, labels.npz and meta.json go (replaced only when complete).
        cfg: the data config: image_size, channels, val_fraction, test_fraction, seed, max_bad_share,
            images_per_shard, max_images_per_class (here: per stratum, the first images in file-name order),
            format (None: "voc"), classes (None: every class the annotations use; VOC sorted by name, COCO in
            category order).

    Returns:
        The prepare metrics: images, objects per class ("classes"), images without a box ("empty_images") and
        boxes, per split; and how many image files could not be decoded ("skipped_files").
    """
    records, names = read_annotations(Path(raw_dir), getattr(cfg, "format", None) or "voc",
                                     getattr(cfg, "classes", None))
    index = {name: k for k, name in enumerate(names)}
    rows = [record.rows(index) for record in records]
    groups = strata(rows, len(names))
    if cfg.max_images_per_class:
        kept = np.concatenate([np.flatnonzero(groups == g)[:cfg.max_images_per_class] for g in np.unique(groups)])
        kept.sort()
        records, rows, groups = [records[i] for i in kept], [rows[i] for i in kept], groups[kept]
    positions = split_detection(groups, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    found = Decoded()
    batches = {name: decode_batches([records[i] for i in held], [rows[i] for i in held], cfg.image_size,
                                    cfg.channels, found) for name, held in positions.items()}
    meta = write_prepared(Path(out_dir), batches, names, image_size=cfg.image_size, channels=cfg.channels,
                          images_per_shard=cfg.images_per_shard, encoding=detection_encoding(names),
                          accept=lambda meta: check_decoded(found, raw_dir, cfg.max_bad_share, meta))
    splits = meta["splits"]
    return {"images": {name: split["images"] for name, split in splits.items()},
            "classes": {name: dict(zip(names, split["class_counts"])) for name, split in splits.items()},
            "empty_images": {name: split["empty_images"] for name, split in splits.items()},
            "boxes": {name: split["boxes"] for name, split in splits.items()},
            "skipped_files": len(found.skipped)}


def check_decoded(found: Decoded, raw_dir: Path, max_bad_share: float, meta: dict) -> None:
    """Warn about skipped images; raise a UserError when more than `max_bad_share` were, or a split lost all."""
    check_skipped(found, raw_dir, max_bad_share)
    for name, split in meta["splits"].items():
        if not split["images"]:
            raise UserError(f"the {name} split holds no readable image: replace the corrupt files or add images")
