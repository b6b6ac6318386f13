"""Reading, validating and splitting image folders (data.py) and the prepare stage's error exits."""

import numpy as np
import pytest
from PIL import Image

from compresslab import data, dataset
from compresslab.errors import UserError

CFG = {"image_size": 16, "channels": 3, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1,
       "max_bad_share": 0.1, "max_images_per_class": None}


def test_reads_every_format_resized_to_the_asked_channels(image_folder):
    folder = data.read_image_folder(image_folder, 16, 3, 0.1)
    assert folder.x.shape == (72, 16, 16, 3) and folder.x.dtype == np.uint8
    assert folder.class_names == ["fire", "no_fire", "smoke"]
    assert np.bincount(folder.y).tolist() == [24, 24, 24]
    gray = data.read_image_folder(image_folder, 12, 1, 0.1, max_per_class=5)
    assert gray.x.shape == (15, 12, 12, 1)


def test_split_is_stratified_seeded_and_disjoint(image_folder):
    folder = data.read_image_folder(image_folder, 8, 1, 0.1)
    first = data.split(folder, 0.25, 0.25, seed=3)
    again = data.split(folder, 0.25, 0.25, seed=3)
    other = data.split(folder, 0.25, 0.25, seed=4)
    for name in data.SPLITS:
        assert np.array_equal(first[name][1], again[name][1])
        assert np.array_equal(first[name][0], again[name][0])
        assert set(np.bincount(first[name][1]).tolist()) == {len(first[name][1]) // 3}
    assert not np.array_equal(first["test"][0], other["test"][0])
    assert sum(len(first[name][1]) for name in data.SPLITS) == 72


def test_prepared_arrays_load_as_normalised_floats(tmp_path, image_folder):
    folder = data.read_image_folder(image_folder, 8, 3, 0.1)
    splits = data.split(folder, 0.25, 0.25, seed=0)
    data.save_prepared(tmp_path, splits, folder.class_names, {**CFG, "image_size": 8})
    x, y = dataset.load_split("train", tmp_path)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert np.allclose(x * 255, splits["train"][0])
    assert dataset.load_meta(tmp_path)["class_names"] == ["fire", "no_fire", "smoke"]


def test_corrupt_files_are_skipped_and_counted_until_too_many(image_folder, capsys):
    (image_folder / "fire" / "broken.png").write_bytes(b"not an image at all")
    folder = data.read_image_folder(image_folder, 8, 1, max_bad_share=0.1)
    assert len(folder.skipped) == 1 and len(folder.y) == 72
    assert "skipped 1 of 73" in capsys.readouterr().out
    for i in range(10):
        (image_folder / "smoke" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match="could not be decoded.*max_bad_share"):
        data.read_image_folder(image_folder, 8, 1, max_bad_share=0.1)


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "only").mkdir(parents=True), "needs at least two"),
    (lambda root: [(root / c).mkdir(parents=True) for c in ("a", "b")], "holds no images"),
])
def test_bad_folders_give_one_line_errors(tmp_path, setup, message):
    root = tmp_path / "raw"
    setup(root)
    with pytest.raises(UserError, match=message) as err:
        data.list_images(root)
    assert "\n" not in str(err.value)


def test_a_split_too_small_for_every_class_is_refused(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (8, 8), color=i * 40).save(tmp_path / name / f"{i}.png")
    folder = data.read_image_folder(tmp_path, 8, 1, 0.0)
    with pytest.raises(UserError, match="fewer than the 3 classes"):
        data.split(folder, 0.1, 0.2, seed=0)


@pytest.mark.parametrize("key, value, message", [
    ("image_size", 4, "at least 8"), ("channels", 2, "1 .grayscale. or 3"), ("val_fraction", 0, "between 0 and 1"),
    ("test_fraction", 0.7, "below 1"), ("max_bad_share", 1.0, r"\[0, 1\)"), ("max_images_per_class", 0, "positive"),
])
def test_data_config_errors(key, value, message):
    cfg = {**CFG, key: value}
    if key == "test_fraction":
        cfg["val_fraction"] = 0.5
    with pytest.raises(UserError, match=message):
        data.validate_data_config(cfg)
