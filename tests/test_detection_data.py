"""The detection data layer: VOC and COCO folders (data/voc.py, data/coco.py), their one-line errors, the
detection prepare (data/prepare_detection.py), its shards read back by NumPy and tf.data (data/shards.py,
data/tfdata.py), and the bundled detection sample (data/detection_sample.py).

Folders are made here, tiny (32x32 images): dark noise with each box filled bright, so a box can be checked
against the pixels it encloses.
"""

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings
from compresslab.data import prepare_detection as pd
from compresslab.data import shards
from compresslab.data.coco import read_coco
from compresslab.data.detection_sample import render_detection_sample, write_detection_sample
from compresslab.data.voc import read_voc
from compresslab.errors import UserError

SIZE = 32
# stem -> objects (name, xmin, ymin, xmax, ymax) as VOC's 1-based inclusive pixels; two negatives.
# The first box moves down with i so that no mirrored box list equals another image's (the flip test tells them
# apart); the second overlaps it for some i, which changes nothing (the union of boxes is what is bright).
OBJECTS = {f"img{i:02d}": [("cat" if i % 2 else "dog", 3 + i, 2 + i, 12 + i, 16 + i)] + (
    [("dog", 20, 22, 30, 32)] if i % 3 == 0 else []) for i in range(14)}
OBJECTS["img14"] = OBJECTS["img15"] = []


def draw(path: Path, objects, size=SIZE, seed=0) -> None:
    """Dark noise with every box's pixels bright (VOC corners: pixel columns xmin-1 .. xmax-1)."""
    pixels = np.random.default_rng(seed).integers(0, 60, (size, size, 3)).astype(np.uint8)
    for _, x0, y0, x1, y1 in objects:
        pixels[y0 - 1:y1, x0 - 1:x1] = 230
    Image.fromarray(pixels).save(path)


def voc_xml(file_name, objects, size=SIZE, extra="") -> str:
    boxes = "".join(f"<object><name>{name}</name><difficult>{int(x0 == 3)}</difficult><bndbox><xmin>{x0}</xmin>"
                    f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                    for name, x0, y0, x1, y1 in objects)
    return (f"{extra}<annotation><filename>{file_name}</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{boxes}</annotation>")


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for n, (stem, objects) in enumerate(OBJECTS.items()):
        suffix = (".png", ".bmp")[n % 2]  # lossless: the pixels read back exactly
        draw(root / "JPEGImages" / f"{stem}{suffix}", objects, seed=n)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem + suffix, objects))
    return root


def expected_rows(objects, names=("cat", "dog"), size=SIZE) -> np.ndarray:
    return np.asarray([(names.index(name), (y0 - 1) / size, (x0 - 1) / size, y1 / size, x1 / size)
                       for name, x0, y0, x1, y1 in objects], np.float32).reshape(-1, 5)


def cfg(**overrides):
    values = dict(image_size=SIZE, channels=3, val_fraction=0.25, test_fraction=0.25, seed=1, max_bad_share=0.1,
                  images_per_shard=3, max_images_per_class=None, format=None, classes=None)  # format None: VOC
    return SimpleNamespace(**{**values, **overrides})


def test_a_voc_folder_reads_as_sorted_records_whose_fractions_match_the_boxes_drawn(voc):
    (voc / "Annotations" / "img01.xml").write_text(voc_xml("img01.bmp", OBJECTS["img01"]).replace(
        "<width>32</width>", ""))  # no width: read from the image header
    records = read_voc(voc)
    assert [r.image.name for r in records] == sorted(r.image.name for r in records) and len(records) == 16
    index = {"cat": 0, "dog": 1}
    for record in records:
        assert (record.width, record.height) == (SIZE, SIZE)
        assert np.array_equal(record.rows(index), expected_rows(OBJECTS[record.image.stem]))
    # difficult objects (xmin 3) are kept; negatives are kept with no boxes
    assert len(records[0].boxes) == 2 and [len(r.boxes) for r in records[-2:]] == [0, 0]


def write_coco(root: Path, folder="images", categories=((7, "dog"), (3, "cat")), annotations=None,
               json_name="instances_train2017.json") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for n, (stem, objects) in enumerate(OBJECTS.items()):
        draw(root / folder / f"{stem}.png", objects, seed=n)
        images.append({"id": 100 + n, "file_name": f"{stem}.png", "width": SIZE, "height": SIZE})
        for name, x0, y0, x1, y1 in objects:
            anns.append({"id": len(anns) + 1, "image_id": 100 + n, "category_id": 7 if name == "dog" else 3,
                         "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], "iscrowd": 0})
    anns.append({"id": 999, "image_id": 100, "category_id": 3, "bbox": [0, 0, 32, 32], "iscrowd": 1})
    data = {"images": images, "annotations": annotations if annotations is not None else anns,
            "categories": [{"id": i, "name": name} for i, name in categories]}
    (root / "annotations" / json_name).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("folder", ["images", "train2017"])
def test_a_coco_folder_reads_with_classes_in_category_id_order_and_crowds_dropped(tmp_path, folder, capsys):
    records, names = read_coco(write_coco(tmp_path / "coco", folder=folder))
    assert names == ["cat", "dog"] and len(records) == 16  # id 3 before id 7; unannotated images kept
    for record in records:
        assert np.array_equal(record.rows({"cat": 0, "dog": 1}), expected_rows(OBJECTS[record.image.stem]))
    assert "dropped 1 iscrowd" in capsys.readouterr().out


def breaks(rel, text=None, remove=False):
    """A damage to a folder: rewrite or remove the file or folder at `rel`."""
    def damage(root: Path):
        if remove:
            path = root / rel
            path.unlink() if path.is_file() else shutil.rmtree(path)
        else:
            (root / rel).write_text(text)
    return damage


LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
          '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><annotation><filename>&lol3;</filename></annotation>')


@pytest.mark.parametrize("damage, names, fix", [
    (breaks("JPEGImages", remove=True), "no JPEGImages/ folder", "put the images in JPEGImages/"),
    (breaks("Annotations", remove=True), "no Annotations/ folder", "one XML per image"),
    (breaks("Annotations/img03.xml", "<annotation><object>"), "img03.xml is not well-formed XML", "fix or regen"),
    (breaks("Annotations/img03.xml", voc_xml("x", [("cat", 5, 5, 40, 9)])), "img03.xml object 1 (cat) lies "
     "outside its 32x32 image", "correct the box or remove the object"),
    (breaks("Annotations/img03.xml", voc_xml("x", [("cat", 5, 5, 5, 9)])), "img03.xml object 1 (cat) has zero",
     "correct the box"),
    (breaks("Annotations/img03.xml", voc_xml("x", [("cat", 5, 5, 9, 9)]).replace("<ymax>9</ymax>", "")),
     "img03.xml object 1 (cat) has no <bndbox><ymax>", "give it in pixels"),
    (breaks("Annotations/img03.xml", voc_xml("x", [("bird", 5, 5, 9, 9)])), "img03.xml object 1 (bird) uses "
     "class 'bird'", "add it to data.classes or remove the object"),
    (breaks("JPEGImages/img03.bmp", remove=True), "img03.xml has no image", "add the image or remove the annot"),
    (breaks("Annotations/img03.xml", remove=True), "img03.bmp has no annotation", "add an XML (without <object>"),
    (breaks("Annotations/img03.xml", LAUGHS), "img03.xml declares XML entities", "remove the DTD"),
])
def test_a_bad_voc_folder_is_one_line_naming_the_file_and_fix_before_any_image_is_decoded(
        voc, tmp_path, monkeypatch, damage, names, fix):
    damage(voc)
    monkeypatch.setattr(pd, "decode_image", lambda *a: pytest.fail("an image was decoded before the check"))
    with pytest.raises(UserError) as err:
        pd.prepare_detection(voc, tmp_path / "out", cfg(classes=["cat", "dog"]))
    message = str(err.value)
    assert names in message and fix in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()


def coco_json(root: Path) -> dict:
    return json.loads((root / "annotations" / "instances_train2017.json").read_text())


def rewrite(change):
    def damage(root: Path):
        data = coco_json(root)
        change(data)
        (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return damage


@pytest.mark.parametrize("damage, names, fix", [
    (rewrite(lambda d: d["annotations"][0].update(category_id=42)), "annotation id 1 (image img00.png) uses "
     "category id 42, which \"categories\" does not declare", "declare it or remove the annotation"),
    (rewrite(lambda d: d["annotations"][0].update(bbox=[20, 0, 20, 5])), "annotation id 1 (image img00.png) lies "
     "outside its 32x32 image", "correct the box"),
    (rewrite(lambda d: d["annotations"][0].update(bbox=[2, 2, 0, 5])), "annotation id 1 (image img00.png) has zero",
     "correct the box"),
    (lambda root: (root / "images" / "img05.png").unlink(), "image img05.png refers to image", "add the image"),
    (lambda root: (root / "annotations" / "instances_train2017.json").write_text('{"images": ['),
     "instances_train2017.json is not valid JSON", "fix or re-export it"),
    (lambda root: (root / "annotations" / "instances_val.json").write_text("{}"), "instances_train2017.json, "
     "instances_val.json", "keep the one split to prepare"),
])
def test_a_bad_coco_folder_is_one_line_naming_the_file_and_fix(tmp_path, monkeypatch, damage, names, fix):
    root = write_coco(tmp_path / "coco")
    damage(root)
    monkeypatch.setattr(pd, "decode_image", lambda *a: pytest.fail("an image was decoded before the check"))
    with pytest.raises(UserError) as err:
        pd.prepare_detection(root, tmp_path / "out", cfg(format="coco"))
    message = str(err.value)
    assert names in message and fix in message and "\n" not in message, message


def read_split(split) -> tuple[np.ndarray, list[np.ndarray]]:
    xs, boxes = [], []
    for x, rows in split.batches(4):  # batches cross the 3-image shard boundaries
        xs.append(x)
        boxes.extend(rows)
    return np.concatenate(xs), boxes


def test_prepared_detection_shards_read_back_alike_through_numpy_and_tf_data(voc, tmp_path):
    import tensorflow as tf

    from compresslab.data import tfdata
    from compresslab.data.prepare import decode_image

    metrics = pd.prepare_detection(voc, tmp_path / "out", cfg())
    splits = shards.open_splits(tmp_path / "out")  # checks every shard's size and md5 against meta.json
    meta = shards.load_meta(tmp_path / "out")
    assert meta["task"] == "detection" and meta["class_names"] == ["cat", "dog"]
    assert all(len(s) and s.task == "detection" for s in splits.values())
    assert sum(metrics["empty_images"].values()) == 2 and metrics["skipped_files"] == 0
    assert sum(metrics["boxes"].values()) == sum(len(o) for o in OBJECTS.values())
    assert [sum(metrics["classes"][s][c] for s in shards.SPLITS) for c in ("cat", "dog")] == [7, 7 + 5]
    records = {r.image.stem: r for r in read_voc(voc)}
    for split in splits.values():
        x, boxes = read_split(split)
        assert all(np.array_equal(a, b) for a, b in zip(boxes, split.ground_truth()))
        # every stored image is one of the files, with exactly its boxes (the files' boxes differ)
        for image, rows in zip(x, boxes):
            stem = next(s for s, o in OBJECTS.items() if np.array_equal(expected_rows(o), rows) and np.array_equal(
                image, shards.to_model_input(decode_image(records[s].image, SIZE, 3))))
            assert stem in OBJECTS
        streamed = list(tfdata.pipeline(split, 4))
        assert np.array_equal(np.concatenate([b[0].numpy() for b in streamed]), x)
        padded = [row for b in streamed for row in b[1].numpy()]
        assert all(np.array_equal(p[:len(r)], r) and np.all(p[len(r):] == -1) for p, r in zip(padded, boxes))
        counted = tfdata.pipeline(split, 4, targets=lambda image, rows: (image, tf.shape(rows)[0]))
        assert np.concatenate([n.numpy() for _, n in counted]).tolist() == [len(r) for r in boxes]
        assert np.array_equal(split.take([len(split) - 1, 0]), x[[len(split) - 1, 0]])
    with pytest.raises(UserError, match="detection data"):
        shards.load_labels("train", tmp_path / "out")
    in_memory = tfdata.pipeline(read_split(splits["train"]), 5)
    assert np.array_equal(np.concatenate([b[0].numpy() for b in in_memory]), read_split(splits["train"])[0])


def test_the_split_is_seeded_and_each_split_gets_images(voc, tmp_path, capsys):
    pd.prepare_detection(voc, tmp_path / "a", cfg())
    pd.prepare_detection(voc, tmp_path / "b", cfg())
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    groups = pd.strata([expected_rows(o) for o in OBJECTS.values()], 2)
    assert groups.tolist().count(2) == 2  # the negatives are a stratum of their own
    first, again, other = (pd.split_detection(groups, 0.25, 0.25, seed) for seed in (1, 1, 2))
    assert all(np.array_equal(first[s], again[s]) and len(first[s]) for s in shards.SPLITS)
    assert any(not np.array_equal(first[s], other[s]) for s in shards.SPLITS)
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(16))
    # four strata of three images cannot all reach a 3-image test split: a plain seeded split, said so
    plain = pd.split_detection(np.repeat(np.arange(4), 3), 0.2, 0.2, seed=0)
    assert all(len(plain[s]) for s in shards.SPLITS) and "not stratified" in capsys.readouterr().out


def test_an_undecodable_image_is_skipped_with_its_boxes_until_too_many(voc, tmp_path):
    (voc / "JPEGImages" / "img04.png").write_bytes(b"not a png")
    metrics = pd.prepare_detection(voc, tmp_path / "out", cfg(max_bad_share=0.1))
    assert metrics["skipped_files"] == 1 and sum(metrics["images"].values()) == 15
    (voc / "JPEGImages" / "img06.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="could not be decoded.*max_bad_share"):
        pd.prepare_detection(voc, tmp_path / "out2", cfg(max_bad_share=0.1))


def test_the_detection_sample_is_deterministic_and_its_boxes_are_exact(tmp_path):
    assert write_detection_sample(tmp_path / "a", images=6, size=64) == 6
    write_detection_sample(tmp_path / "b", images=6, size=64)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
                                    for f in files)
    canvases = render_detection_sample(images=6, size=64, with_masks=True)
    for canvas, record in zip(canvases, read_voc(tmp_path / "a")):
        assert np.array_equal(record.rows({str(d): d for d in range(10)}), canvas.boxes)  # VOC round trip
        for mask, (y0, x0, y1, x1) in zip(canvas.masks, canvas.pixel_boxes):
            ys, xs = np.nonzero(mask)
            assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)  # inside, touching edges
            assert 18 * 0.4 <= max(y1 - y0, x1 - x0) <= 44
    many = render_detection_sample(images=100, size=64)
    negatives = sum(len(c.boxes) == 0 for c in many)
    assert 0 < negatives < 15 and max(len(c.boxes) for c in many) <= 4
    assert {int(c) for canvas in many for c in canvas.boxes[:, 0]} == set(range(10))


@pytest.mark.parametrize("augment", [{"flip": True}, {"crop": 3}, {"flip": True, "crop": 3}])
def test_flip_and_shift_augmentation_move_the_boxes_with_the_image(voc, tmp_path, augment):
    import tf_keras as keras

    from compresslab.data import tfdata

    pd.prepare_detection(voc, tmp_path / "out", cfg())
    train = shards.open_splits(tmp_path / "out")["train"]
    moving = dataclasses.replace(train, augment=settings.AugmentConfig(**augment))
    keras.utils.set_random_seed(3)
    seen = set()
    original = {tuple(r.ravel().tolist()) for r in train.ground_truth()}
    epochs = tfdata.pipeline(moving, 4, training=True)
    for images, boxes in [batch for _ in range(2) for batch in epochs]:
        for image, rows in zip(images.numpy(), boxes.numpy()):
            rows = rows[(rows[:, 0] >= 0) & (rows[:, 3] > rows[:, 1]) & (rows[:, 4] > rows[:, 2])]
            if not len(rows):
                continue
            ys, xs = np.nonzero(image.min(axis=-1) > 0.8)  # the bright box pixels (a shift pads with black)
            union = (rows[:, 1].min(), rows[:, 2].min(), rows[:, 3].max(), rows[:, 4].max())
            assert np.allclose((ys.min() / SIZE, xs.min() / SIZE, (ys.max() + 1) / SIZE, (xs.max() + 1) / SIZE),
                               union, atol=1e-5)
            seen.add(tuple(rows.ravel().tolist()) in original)
    assert False in seen                                  # boxes moved with their images
    assert (True in seen) == (augment == {"flip": True})  # a flip leaves half the examples; a shift hardly any
