"""Read a Pascal VOC detection folder:

    data/raw/JPEGImages/<name>.jpg        any of .jpg .jpeg .png .bmp
    data/raw/Annotations/<name>.xml       <size><width/><height/></size>, then per object
                                          <name>, <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>

An image and its annotation pair by file stem (the XML's <filename> is not trusted: tools often write a stale
one). Rules, all checked before any image is decoded:

- Corners are VOC's 1-based inclusive pixel indices: `xmin=1, xmax=W` spans the whole width, so the continuous
  box is `(xmin - 1, xmax)`. A box may reach one pixel past the image (tools disagree on the base) and is then
  clipped; `xmin >= xmax` or `ymin >= ymax` is zero area, an error.
- A negative image (nothing to detect) is an XML without <object>; it is kept and counted. An image without an
  XML is an error (a forgotten annotation would silently teach "nothing here").
- `difficult` objects are kept as ordinary objects: the pipeline has no "ignore" label, and dropping them would
  teach the detector that those objects are background.
- <size> gives the image size; when it is absent or 0, the image header is read (not decoded).

XML is parsed with defusedxml: annotation files come from elsewhere, and an entity-expansion ("billion laughs")
or external-entity file is refused with a UserError instead of exhausting memory or reading local files.
"""

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeElementTree

from compresslab.data.annotations import (IMAGE_SUFFIXES, Annotated, check_class, check_readable, checked_box,
                                          header_size, positive_size)
from compresslab.errors import UserError

CORNERS = ("xmin", "ymin", "xmax", "ymax")


def read_voc(raw_dir: str | Path, classes: Sequence[str] | None = None) -> list[Annotated]:
    """Every annotated image of a VOC folder, sorted by file name.

    Args:
        raw_dir: the folder holding JPEGImages/ and Annotations/.
        classes: the configured class list (`data.classes`); an object of another class is an error. None
            accepts every class name.

    Returns:
        One `Annotated` per image, boxes in pixels (see the module docstring for the conventions).

    Raises:
        UserError: one line naming the file and the fix, for anything the module docstring refuses.
    """
    raw_dir = Path(raw_dir)
    images_dir, annotations_dir = raw_dir / "JPEGImages", raw_dir / "Annotations"
    for folder in (images_dir, annotations_dir):
        if not folder.is_dir():
            raise UserError(f"VOC folder {raw_dir} has no {folder.name}/ folder: put the images in "
                            f"{images_dir.name}/ and one XML per image in {annotations_dir.name}/ (or set data.format)")
    images = {}
    for path in sorted(images_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise UserError(f"{images[path.stem]} and {path} share the name {path.stem!r}, so Annotations/"
                                f"{path.stem}.xml would describe both: rename or remove one")
            images[path.stem] = path
    xmls = {path.stem: path for path in sorted(annotations_dir.glob("*.xml")) if path.is_file()}
    if not xmls:
        raise UserError(f"{annotations_dir} holds no .xml annotation: add one per image in {images_dir}")
    unannotated = sorted(set(images) - set(xmls))
    if unannotated:
        raise UserError(f"image {images[unannotated[0]]} has no annotation {annotations_dir / unannotated[0]}.xml "
                        f"({len(unannotated)} image(s) without one): add an XML (without <object> for an image "
                        f"with nothing to detect) or remove the image")
    records = []
    for stem in sorted(xmls):
        xml_path = xmls[stem]
        if stem not in images:
            raise UserError(f"{xml_path} has no image {images_dir / stem}.* ({', '.join(IMAGE_SUFFIXES)}): add the "
                            f"image or remove the annotation")
        records.append(read_annotation(xml_path, images[stem], classes))
    return records


def read_annotation(xml_path: Path, image_path: Path, classes: Sequence[str] | None = None) -> Annotated:
    """One VOC XML file and its image as an `Annotated` record (pixels; see the module docstring)."""
    root = parse(xml_path)
    if root.tag != "annotation":
        raise UserError(f"{xml_path} has root element <{root.tag}>, not <annotation>: is it a VOC annotation?")
    check_readable(image_path, str(xml_path))
    size = root.find("size")
    width = positive_size(text(size, "width"), f"{xml_path} <size><width>") if size is not None else None
    height = positive_size(text(size, "height"), f"{xml_path} <size><height>") if size is not None else None
    if width is None or height is None:
        width, height = header_size(image_path, str(xml_path))
    names, boxes = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (text(obj, "name") or "").strip()
        where = f"{xml_path} object {number}" + (f" ({name})" if name else "")
        if not name:
            raise UserError(f"{where} has no <name>: add the object's class name")
        check_class(name, classes, where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise UserError(f"{where} has no <bndbox>: add <bndbox> with <xmin>, <ymin>, <xmax>, <ymax> in pixels")
        corners = {}
        for corner in CORNERS:
            value = text(bndbox, corner)
            try:
                corners[corner] = float(value)
            except (TypeError, ValueError):
                problem = "has no" if value is None else f"has a non-numeric ({value.strip()!r})"
                raise UserError(f"{where} {problem} <bndbox><{corner}>: give it in pixels") from None
        if corners["xmax"] <= corners["xmin"] or corners["ymax"] <= corners["ymin"]:
            # Zero area as the module docstring defines it; `checked_box` words the error (its corners cross).
            checked_box(corners["ymin"], corners["xmin"], corners["ymin"], corners["xmin"], width, height, where)
        # 1-based inclusive indices to continuous corners: pixel i (1-based) spans [i - 1, i).
        boxes.append(checked_box(corners["ymin"] - 1, corners["xmin"] - 1, corners["ymax"], corners["xmax"],
                                 width, height, where))
        names.append(name)
    return Annotated(image_path, width, height, tuple(names), tuple(boxes), str(xml_path))


def parse(xml_path: Path) -> ElementTree.Element:
    """The XML root, through defusedxml; malformed or hostile XML is a one-line UserError naming the file."""
    try:
        return SafeElementTree.parse(xml_path).getroot()
    except defusedxml.EntitiesForbidden:
        raise UserError(f"{xml_path} declares XML entities, which compresslab refuses (defusedxml: entity expansion "
                        f"can exhaust memory): remove the DTD") from None
    except (defusedxml.DTDForbidden, defusedxml.ExternalReferenceForbidden):
        raise UserError(f"{xml_path} refers to an external DTD or entity, which compresslab refuses (defusedxml): "
                        f"remove the DTD") from None
    except ElementTree.ParseError as err:
        raise UserError(f"{xml_path} is not well-formed XML ({err}): fix or regenerate the annotation") from None
    except OSError as err:
        raise UserError(f"{xml_path} cannot be read ({err.strerror or err}): make it readable") from None


def text(element: ElementTree.Element, tag: str) -> str | None:
    """The text of `element`'s child `tag`, or None when there is no such child."""
    child = element.find(tag)
    return None if child is None else (child.text or "")
