"""Read a COCO detection folder:

    data/raw/annotations/instances_<name>.json   exactly one instances*.json: one COCO split file at a time
    data/raw/images/<file_name>                   the images, found in the first of these folders that exists:
    data/raw/<name>/<file_name>                   images/, the folder named like the JSON's suffix
    data/raw/<file_name>                          (train2017/ for instances_train2017.json), data/raw itself

Rules, all checked before any image is decoded:

- `bbox` is `[x, y, width, height]` in continuous pixels (0 at the top-left corner). A box may reach one pixel
  past its image (rounding in exporters) and is then clipped; zero width or height is an error.
- Class names are the `categories` names in id order (COCO's ids have gaps; the class index is the position in
  that order), or `data.classes` when it is set, which must then list every category an annotation uses.
- An image no annotation mentions is a negative image: kept and counted.
- `iscrowd: 1` annotations are dropped (with a printed count): one box around a crowd is not an object a
  detector should learn to box, and the pipeline has no "ignore" label for it.
- An image's size is its `width` / `height` entry, or its file header (not decoded) when those are absent.
"""

import json
from collections.abc import Sequence
from pathlib import Path

from compresslab.data.annotations import Annotated, check_class, check_readable, checked_box, header_size, positive_size
from compresslab.errors import UserError


def find_json(raw_dir: Path) -> Path:
    """The one annotations/instances*.json file of a COCO folder."""
    folder = raw_dir / "annotations"
    if not folder.is_dir():
        raise UserError(f"COCO folder {raw_dir} has no annotations/ folder: put the instances_<split>.json file "
                        f"there (or set data.format)")
    found = sorted(folder.glob("instances*.json"))
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) if found else "none"
        raise UserError(f"{folder} must hold exactly one instances*.json file, it holds {listed}: keep the one "
                        f"split to prepare")
    return found[0]


def image_folder(raw_dir: Path, json_path: Path) -> Path:
    """Where `file_name`s resolve: images/, else the folder named like the JSON's suffix, else raw_dir."""
    suffix = json_path.stem[len("instances"):].lstrip("_")
    for folder in (raw_dir / "images", raw_dir / suffix if suffix else None):
        if folder is not None and folder.is_dir():
            return folder
    return raw_dir


def read_coco(raw_dir: str | Path, classes: Sequence[str] | None = None) -> tuple[list[Annotated], list[str]]:
    """Every image of a COCO folder with its boxes, sorted by file name, and the class names.

    Args:
        raw_dir: the folder holding annotations/instances*.json and the images (see the module docstring).
        classes: the configured class list (`data.classes`), or None for the `categories` names in id order.

    Returns:
        (one `Annotated` per image, boxes in pixels; the class names, in class-id order).

    Raises:
        UserError: one line naming the file and the fix, for anything the module docstring refuses.
    """
    raw_dir = Path(raw_dir)
    json_path = find_json(raw_dir)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{json_path} is not valid JSON ({err}): fix or re-export it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{json_path} cannot be read ({err}): make it a readable UTF-8 file") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "categories")):
        raise UserError(f"{json_path} is not a COCO instances file (it needs \"images\" and \"categories\" lists): "
                        f"export the detection annotations in COCO format")
    categories = read_categories(data["categories"], json_path)
    names = list(classes) if classes is not None else [categories[key] for key in sorted(categories)]
    folder = image_folder(raw_dir, json_path)
    images = {}
    for entry in data["images"]:
        image_id, file_name = entry.get("id") if isinstance(entry, dict) else None, None
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str) and entry["file_name"]:
            file_name = entry["file_name"]
        if image_id is None or file_name is None:
            raise UserError(f"{json_path}: image entry {str(entry)[:80]} needs an \"id\" and a \"file_name\": fix "
                            f"the export")
        if image_id in images:
            raise UserError(f"{json_path}: image id {image_id!r} appears twice ({file_name}): give each image its "
                            f"own id")
        where = f"{json_path} image {file_name}"
        path = folder / file_name
        check_readable(path, where)
        width = positive_size(entry.get("width"), f"{where} \"width\"")
        height = positive_size(entry.get("height"), f"{where} \"height\"")
        if width is None or height is None:
            width, height = header_size(path, where)
        images[image_id] = {"path": path, "width": width, "height": height, "names": [], "boxes": []}
    crowd = 0
    for annotation in data.get("annotations") or []:
        if not isinstance(annotation, dict):
            raise UserError(f"{json_path}: annotation {str(annotation)[:80]} is not an object: fix the export")
        where = f"{json_path} annotation id {annotation.get('id')!r}"
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise UserError(f"{where} refers to image id {annotation.get('image_id')!r}, which \"images\" does not "
                            f"declare: add the image entry or remove the annotation")
        where += f" (image {image['path'].name})"
        category = annotation.get("category_id")
        if category not in categories:
            raise UserError(f"{where} uses category id {category!r}, which \"categories\" does not declare: declare "
                            f"it or remove the annotation")
        if annotation.get("iscrowd"):
            crowd += 1
            continue
        check_class(categories[category], classes, where)
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"{where} has bbox {bbox!r}, not [x, y, width, height] in pixels: fix the export")
        x, y, w, h = (float(v) for v in bbox)
        image["boxes"].append(checked_box(y, x, y + h, x + w, image["width"], image["height"], where))
        image["names"].append(categories[category])
    if crowd:
        print(f"note: dropped {crowd} iscrowd annotation(s) of {json_path.name}: a crowd region is not one object")
    records = [Annotated(image["path"], image["width"], image["height"], tuple(image["names"]),
                         tuple(image["boxes"]), str(json_path)) for image in images.values()]
    return sorted(records, key=lambda record: str(record.image)), names


def read_categories(entries: list, json_path: Path) -> dict[int, str]:
    """COCO's categories as {id: name}; a malformed or repeated entry is a UserError."""
    categories = {}
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("name"), str)):
            raise UserError(f"{json_path}: category {str(entry)[:80]} needs an integer \"id\" and a \"name\": fix "
                            f"the export")
        if entry["id"] in categories or entry["name"] in categories.values():
            raise UserError(f"{json_path}: category id {entry['id']} or name {entry['name']!r} appears twice: give "
                            f"each category its own id and name")
        categories[entry["id"]] = entry["name"]
    if not categories:
        raise UserError(f"{json_path} declares no categories: add the classes to its \"categories\" list")
    return categories
