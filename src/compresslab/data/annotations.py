"""What a detection data set's annotation readers (`voc`, `coco`) return, and the checks they share.

A reader turns its annotation files into `Annotated` records, one per image, in pixels of the image as stored.
`prepare_detection` turns them into box rows `(class_id, ymin, xmin, ymax, xmax)`, the corners as fractions of
the image side (TensorFlow's order): images are resized to a square, not letterboxed, so fractions stay valid.

Every check here runs before any image is decoded, so a bad annotation fails in a second, not after minutes.
"""

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from compresslab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TOLERANCE = 1.0  # pixels a box may reach past its image (1-based VOC tools and rounding); clipped back inside
BOX_COLUMNS = 5  # class_id, ymin, xmin, ymax, xmax


@dataclass(frozen=True)
class Annotated:
    """One annotated image.

    `boxes` are continuous pixel corners `(ymin, xmin, ymax, xmax)`, 0 at the top-left corner of the image and
    `width` / `height` at the far edges, already checked and clipped to the image; `names[i]` is box i's class.
    `source` is the annotation file the record came from, for error messages. No boxes: a negative image.
    """

    image: Path
    width: int
    height: int
    names: tuple[str, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    source: str

    def rows(self, class_index: Mapping[str, int]) -> np.ndarray:
        """float32 (n, 5) box rows: class id, then the corners as fractions of the image side."""
        rows = np.zeros((len(self.boxes), BOX_COLUMNS), np.float32)
        for row, name, (y0, x0, y1, x1) in zip(rows, self.names, self.boxes):
            row[:] = (class_index[name], y0 / self.height, x0 / self.width, y1 / self.height, x1 / self.width)
        return rows


def checked_box(y0: float, x0: float, y1: float, x1: float, width: int, height: int,
                where: str) -> tuple[float, float, float, float]:
    """The box clipped to its image, or a UserError naming `where` when it has no area or lies outside the image
    by more than TOLERANCE pixels."""
    fix = "correct the box or remove the object"
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"{where} has zero or negative area (xmin {x0:g}, xmax {x1:g}, ymin {y0:g}, ymax {y1:g} in "
                        f"pixels): {fix}")
    if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > width + TOLERANCE or y1 > height + TOLERANCE:
        raise UserError(f"{where} lies outside its {width}x{height} image (xmin {x0:g}, ymin {y0:g}, xmax {x1:g}, "
                        f"ymax {y1:g} in pixels): {fix}")
    return (max(y0, 0.0), max(x0, 0.0), min(y1, float(height)), min(x1, float(width)))


def check_class(name: str, classes: Sequence[str] | None, where: str) -> None:
    """A UserError when a configured class list exists and `name` is not in it."""
    if classes is not None and name not in classes:
        raise UserError(f"{where} uses class {name!r}, which data.classes {list(classes)} does not list: add it to "
                        f"data.classes or remove the object")


def check_readable(path: Path, where: str) -> None:
    """A UserError unless the image file `where` refers to exists and can be opened (nothing decoded yet)."""
    if not path.is_file():
        raise UserError(f"{where} refers to image {path}, which does not exist: add the image or remove the "
                        f"annotation")
    if not os.access(path, os.R_OK):
        raise UserError(f"{where} refers to image {path}, which cannot be read (permissions): make it readable")


def header_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the image file's header, without decoding its pixels (PIL opens lazily)."""
    check_readable(path, where)
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"{where} gives no image size and image {path} cannot be read ({err}): replace the image "
                        f"or add its size to the annotation") from err


def class_names(records: Iterable[Annotated], classes: Sequence[str] | None) -> list[str]:
    """The configured class list when there is one, else every class name the records use, sorted."""
    if classes is not None:
        return list(classes)
    return sorted({name for record in records for name in record.names})


def positive_size(value, where: str) -> int | None:
    """An image side given by an annotation: a positive whole number, or None when absent or 0 (read it from
    the image then). Anything else is a UserError naming `where`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number >= 0 or number != int(number):
        raise UserError(f"{where} is {value!r}, not a whole number of pixels: correct it")
    return int(number) or None
