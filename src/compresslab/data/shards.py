"""The prepared splits as stored on disk: GZIP-compressed TFRecord shards of a bounded size, one folder.

    data/prepared/meta.json                       class names, input shape, and per split: the shards with
                                                  their image count, bytes and md5, and the class counts
    data/prepared/train-00000-of-00002.tfrecord.gz
    data/prepared/labels.npz                      every split's integer labels (readers that need only labels)

Each record is one image: its integer label as 8 little-endian bytes, then its uint8 pixels (H, W, C). A
detection record (meta.json's "task": "detection") is its box count n as 8 little-endian bytes, then n box rows
of 5 little-endian float32 (class id, ymin, xmin, ymax, xmax as fractions of the image side), then the pixels;
its labels.npz holds `<split>_counts` (boxes per image, stored order) and `<split>_boxes` (all rows). A fixed
raw layout instead of `tf.train.Example` lets this module read the shards with NumPy and `gzip` alone, so the
stages that run .tflite files (LiteRT, no TensorFlow) read exactly the input the training stages read
(`compresslab.data.tfdata` reads the same records with tf.data). Nothing here holds a whole split in memory: readers
get batches. `prepare` (`compresslab.data.prepare`) writes what this reads.
"""

import gzip
import hashlib
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresslab.errors import UserError
from compresslab.paths import PREPARED
from compresslab.settings import SHUFFLE_BUFFER, AugmentConfig

SPLITS = ("train", "val", "test")
PIXEL_SCALE = 1.0 / 255.0
LABEL_BYTES = 8          # int64, little-endian, before the pixels of each record
COUNT_BYTES = 8          # a detection record's box count: int64, little-endian
BOX_COLUMNS = 5          # a box row: class id, ymin, xmin, ymax, xmax (float32, little-endian)
BOX_BYTES = BOX_COLUMNS * 4
SHARD_SUFFIX = ".tfrecord.gz"
FIX = "run `dvc checkout data/prepared` to restore what DVC recorded, or `dvc repro -f prepare` to rebuild it"


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}{SHARD_SUFFIX}"


def load_meta(prepared_dir: str | Path = PREPARED) -> dict:
    """Class names, image size, channels, pixel scale and the shard list of the prepared data."""
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro prepare` first")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class StoredSplit:
    """One prepared split, read in batches from its shards, never whole. `shuffle_buffer` and `augment` say how
    a training pipeline (`tfdata.pipeline`) reads it: the `data` keys of the same names. `targets`, for a
    detection split, encodes each image's boxes against the model's anchors in every pipeline that feeds
    Keras (`training_stage.load_splits` sets it), so fits and evaluations need no other argument."""

    name: str
    folder: Path
    meta: dict
    shuffle_buffer: int = SHUFFLE_BUFFER
    augment: AugmentConfig | None = None
    targets: Callable | None = None

    @property
    def shards(self) -> list[Path]:
        return [self.folder / shard["file"] for shard in self.meta["splits"][self.name]["shards"]]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.meta["image_size"], self.meta["image_size"], self.meta["channels"])

    def __len__(self) -> int:
        return sum(shard["images"] for shard in self.meta["splits"][self.name]["shards"])

    @property
    def task(self) -> str:
        """"classification" or "detection": what the records hold (meta.json's "task"; absent before detection)."""
        return self.meta.get("task", "classification")

    def labels(self) -> np.ndarray:
        """The split's integer labels. A detection split has none: a UserError points to `ground_truth`."""
        if self.task == "detection":
            raise UserError(f"{self.folder} holds detection data, which has boxes, not class labels: use a "
                            f"detection model and configuration with it (StoredSplit.ground_truth reads the boxes)")
        with np.load(self.folder / "labels.npz") as labels:
            return labels[self.name]

    def ground_truth(self) -> list[np.ndarray]:
        """A detection split's box rows per image, float32 (n, 5) each, in stored order, from labels.npz alone
        (no pixel is decoded)."""
        if self.task != "detection":
            raise UserError(f"{self.folder} holds classification data, which has no boxes: prepare a detection "
                            f"data set (data.format voc or coco)")
        with np.load(self.folder / "labels.npz") as labels:
            counts, boxes = labels[f"{self.name}_counts"], labels[f"{self.name}_boxes"]
        return np.split(boxes.reshape(-1, BOX_COLUMNS), np.cumsum(counts)[:-1]) if len(counts) else []

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray | list[np.ndarray]]]:
        """(float32 images in [0, 1], int64 labels) in stored order, `batch_size` at a time. For a detection
        split the second item is a list of float32 (n, 5) box rows, one per image."""
        if self.task == "detection":
            yield from self._detection_batches(batch_size)
            return
        images, labels = [], []
        for record in self._records():
            labels.append(struct.unpack("<q", record[:LABEL_BYTES])[0])
            images.append(np.frombuffer(record, np.uint8, offset=LABEL_BYTES).reshape(self.image_shape))
            if len(images) == batch_size:
                yield to_model_input(np.stack(images)), np.asarray(labels, np.int64)
                images, labels = [], []
        if images:
            yield to_model_input(np.stack(images)), np.asarray(labels, np.int64)

    def _detection_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        images, boxes = [], []
        for record in self._records():
            image, rows = decode_detection_record(record, self.image_shape)
            images.append(image)
            boxes.append(rows)
            if len(images) == batch_size:
                yield to_model_input(np.stack(images)), boxes
                images, boxes = [], []
        if images:
            yield to_model_input(np.stack(images)), boxes

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The images at `indices` (positions in stored order) as model input, in the order of `indices`."""
        wanted = {int(i): n for n, i in enumerate(indices)}
        chosen = np.empty((len(indices), *self.image_shape), np.float32)
        position = 0
        for x, _ in self.batches():
            for offset in range(len(x)):
                if position + offset in wanted:
                    chosen[wanted[position + offset]] = x[offset]
            position += len(x)
        return chosen

    def _records(self) -> Iterator[bytes]:
        """The records of every shard: TFRecord framing (length, its CRC, data, data CRC) inside GZIP. The
        GZIP stream's own CRC and length catch a corrupt or truncated shard; `check` catches it earlier."""
        for path in self.shards:
            try:
                with gzip.open(path, "rb") as stream:
                    while header := stream.read(12):
                        (length,) = struct.unpack("<Q", header[:8])
                        record = stream.read(length)
                        if len(header) < 12 or len(record) < length or len(stream.read(4)) < 4:
                            raise EOFError("a record ends early")
                        yield record
            except (OSError, EOFError, struct.error) as err:
                raise UserError(f"shard {path} cannot be read ({err}): {FIX}") from err


def decode_detection_record(record: bytes, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One detection record to (uint8 pixels of `shape`, float32 (n, 5) box rows)."""
    (n,) = struct.unpack("<q", record[:COUNT_BYTES])
    rows = np.frombuffer(record, "<f4", count=n * BOX_COLUMNS, offset=COUNT_BYTES).astype(np.float32)
    pixels = np.frombuffer(record, np.uint8, offset=COUNT_BYTES + n * BOX_BYTES).reshape(shape)
    return pixels, rows.reshape(n, BOX_COLUMNS)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to the float32 [0, 1] scale every model is trained and evaluated in."""
    return images.astype(np.float32) * np.float32(PIXEL_SCALE)


def open_splits(prepared_dir: str | Path = PREPARED, verify: bool = True) -> dict[str, StoredSplit]:
    """Every prepared split, checked first (see `check`) so that a bad shard fails before any work."""
    meta = load_meta(prepared_dir)
    if verify:
        check(prepared_dir, meta)
    return {name: StoredSplit(name, Path(prepared_dir), meta) for name in SPLITS}


def open_split(name: str, prepared_dir: str | Path = PREPARED) -> StoredSplit:
    return open_splits(prepared_dir)[name]


def load_labels(name: str, prepared_dir: str | Path = PREPARED) -> np.ndarray:
    """The integer labels of one split, without reading its images. A detection data set has none: UserError
    (read its boxes with `StoredSplit.ground_truth`)."""
    with np.load(Path(prepared_dir) / "labels.npz") as labels:
        if name not in labels and f"{name}_counts" in labels:
            raise UserError(f"{prepared_dir} holds detection data, which has boxes, not class labels: use a "
                            f"detection model and configuration with it")
        return labels[name]


def check(prepared_dir: str | Path, meta: dict) -> None:
    """Raise a one-line UserError unless every shard meta.json lists is there, whole and unchanged.

    Size first (a truncated copy), then md5 (a corrupt file, or a shard of another `prepare` configuration
    copied in under the same name). Hashing reads each file once, at disk speed: seconds for gigabytes, before
    minutes of training on data that is not what the configuration says.
    """
    folder = Path(prepared_dir)
    for split in SPLITS:
        for shard in meta["splits"][split]["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                raise UserError(f"shard {path} listed in {folder / 'meta.json'} is missing: {FIX}")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise UserError(f"shard {path} has {size:,} bytes, meta.json says {shard['bytes']:,} (truncated "
                                f"or from another prepare configuration): {FIX}")
            if file_md5(path) != shard["md5"]:
                raise UserError(f"shard {path} does not match its md5 in meta.json (corrupt, or from another "
                                f"prepare configuration): {FIX}")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def count(split) -> int:
    """Images in a StoredSplit or an in-memory (images, labels) or (images, list of box rows) pair."""
    return len(split) if isinstance(split, StoredSplit) else len(split[1])


def take(split, indices: Sequence[int]) -> np.ndarray:
    """The model-input images at `indices` of a StoredSplit or an in-memory (images, labels) pair."""
    if isinstance(split, StoredSplit):
        return split.take(indices)
    return np.asarray(split[0], np.float32)[np.asarray(indices, int)]


def image_batches(images, batch_size: int = 256) -> Iterator[np.ndarray]:
    """Model-input batches of a StoredSplit, or of an in-memory float array (tests, small in-process tools)."""
    if isinstance(images, StoredSplit):
        yield from (x for x, _ in images.batches(batch_size))
    else:
        for start in range(0, len(images), batch_size):
            yield np.asarray(images[start:start + batch_size], np.float32)


def image_shape(images) -> tuple[int, ...]:
    return images.image_shape if isinstance(images, StoredSplit) else tuple(np.shape(images)[1:])
