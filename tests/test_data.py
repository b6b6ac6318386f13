"""Reading, validating and splitting image folders (data/prepare.py), the prepared shards (data/shards.py,
data/tfdata.py) and their errors."""

import numpy as np
import pytest
from PIL import Image

from compresslab import settings
from compresslab.data import prepare
from compresslab.data import shards
from compresslab.errors import UserError

CFG = {"image_size": 16, "channels": 3, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1,
       "max_bad_share": 0.1, "max_images_per_class": None}


def prepared(image_folder, out, **cfg):
    return prepare.prepare(image_folder, out, settings.parse("data", {**CFG, **cfg}))


def read_all(split) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*split.batches(7))  # an odd batch size: batches cross shard boundaries
    return np.concatenate(xs), np.concatenate(ys)


def test_reads_every_format_resized_to_the_asked_channels(image_folder, tmp_path):
    metrics = prepared(image_folder, tmp_path / "rgb", image_size=16, channels=3)
    assert sum(metrics["images"].values()) == 72 and metrics["skipped_files"] == 0
    splits = shards.open_splits(tmp_path / "rgb")
    x, y = read_all(splits["train"])
    assert x.shape == (len(splits["train"]), 16, 16, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and np.allclose(x * 255, np.round(x * 255))
    assert splits["train"].meta["class_names"] == ["fire", "no_fire", "smoke"]
    assert sum(np.bincount(read_all(s)[1]).tolist() == [len(s) // 3] * 3 for s in splits.values()) == 3
    prepared(image_folder, tmp_path / "gray", image_size=12, channels=1, max_images_per_class=5)
    gray = shards.open_splits(tmp_path / "gray")
    assert sum(len(s) for s in gray.values()) == 15 and gray["test"].image_shape == (12, 12, 1)


def test_split_is_stratified_seeded_and_disjoint(image_folder):
    _, labels, names = prepare.list_labelled(image_folder)
    first = prepare.split_indices(labels, len(names), 0.25, 0.25, seed=3)
    again = prepare.split_indices(labels, len(names), 0.25, 0.25, seed=3)
    other = prepare.split_indices(labels, len(names), 0.25, 0.25, seed=4)
    for name in prepare.SPLITS:
        assert np.array_equal(first[name], again[name])
        assert set(np.bincount(labels[first[name]]).tolist()) == {len(first[name]) // 3}
    assert not np.array_equal(first["test"], other["test"])
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(72))


def test_shards_are_bounded_repeat_byte_for_byte_and_read_alike_by_numpy_and_tf_data(image_folder, tmp_path):
    prepared(image_folder, tmp_path / "a", image_size=8, images_per_shard=10)
    prepared(image_folder, tmp_path / "b", image_size=8, images_per_shard=10)
    meta = shards.load_meta(tmp_path / "a")
    train = meta["splits"]["train"]
    assert [shard["images"] for shard in train["shards"]] == [10] * (train["images"] // 10) + (
        [train["images"] % 10] if train["images"] % 10 else [])
    assert train["shards"][0]["file"] == f"train-00000-of-{len(train['shards']):05d}.tfrecord.gz"
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert not (tmp_path / "a.partial").exists()
    splits = shards.open_splits(tmp_path / "a")
    x, y = read_all(splits["train"])
    assert np.array_equal(y, splits["train"].labels()) and np.array_equal(y, shards.load_labels("train", tmp_path / "a"))
    from compresslab.data import tfdata

    streamed = [(images.numpy(), labels.numpy()) for images, labels in tfdata.pipeline(splits["train"], 16)]
    assert np.array_equal(np.concatenate([b[0] for b in streamed]), x)   # bit for bit the same model input
    assert np.array_equal(np.concatenate([b[1] for b in streamed]), y)
    assert np.array_equal(splits["train"].take([5, 0, 11]), x[[5, 0, 11]])


def test_a_training_pipeline_shuffles_and_augments_the_same_way_from_the_same_seed(image_folder, tmp_path):
    import dataclasses

    import tf_keras as keras

    from compresslab.data import tfdata

    prepared(image_folder, tmp_path, image_size=8)
    train = shards.open_splits(tmp_path)["train"]
    x, _ = read_all(train)

    def epoch(split, seed):
        keras.utils.set_random_seed(seed)
        return np.concatenate([images.numpy() for images, _ in tfdata.pipeline(split, 8, training=True)])

    plain = epoch(train, 1)
    assert not np.array_equal(plain, x) and np.allclose(np.sort(plain.ravel()), np.sort(x.ravel()))
    assert np.array_equal(plain, epoch(train, 1)) and not np.array_equal(plain, epoch(train, 2))
    augmenting = dataclasses.replace(train, augment=settings.AugmentConfig(flip=True, crop=2, brightness=0.2))
    changed = epoch(augmenting, 1)
    assert np.array_equal(changed, epoch(augmenting, 1)) and not np.array_equal(changed, plain)
    assert changed.min() >= 0.0 and changed.max() <= 1.0


@pytest.mark.parametrize("damage, message", [
    (lambda shard, other: shard.write_bytes(shard.read_bytes()[:-40]), "truncated"),
    (lambda shard, other: shard.write_bytes(shard.read_bytes()[:30] + b"\0" * 8 + shard.read_bytes()[38:]),
     "corrupt"),
    (lambda shard, other: shard.write_bytes(other.read_bytes()), "another prepare configuration"),
    (lambda shard, other: shard.unlink(), "missing"),
])
def test_a_bad_shard_is_one_line_naming_the_fix_before_any_work(image_folder, tmp_path, damage, message):
    prepared(image_folder, tmp_path / "mine", image_size=8)
    prepared(image_folder, tmp_path / "other", image_size=8, seed=9)
    shard = tmp_path / "mine" / shards.shard_name("test", 0, 1)
    damage(shard, tmp_path / "other" / shard.name)
    with pytest.raises(UserError, match=message) as err:
        shards.open_splits(tmp_path / "mine")
    assert "dvc checkout data/prepared" in str(err.value) and "\n" not in str(err.value)


def test_an_unreadable_shard_is_a_user_error_for_the_numpy_reader_too(image_folder, tmp_path):
    prepared(image_folder, tmp_path, image_size=8)
    test = shards.open_splits(tmp_path)["test"]
    test.shards[0].write_bytes(test.shards[0].read_bytes()[:-40])  # after the check: read fails cleanly
    with pytest.raises(UserError, match="cannot be read"):
        read_all(test)


def test_corrupt_files_are_skipped_and_counted_until_too_many(image_folder, tmp_path, capsys):
    (image_folder / "fire" / "broken.png").write_bytes(b"not an image at all")
    metrics = prepared(image_folder, tmp_path / "out", image_size=8, channels=1, max_bad_share=0.1)
    assert metrics["skipped_files"] == 1 and sum(metrics["images"].values()) == 72
    assert "skipped 1 of 73" in capsys.readouterr().out
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()}
    for i in range(10):
        (image_folder / "smoke" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UserError, match="could not be decoded.*max_bad_share"):
        prepared(image_folder, tmp_path / "out", image_size=8, channels=1, max_bad_share=0.1)
    # What an earlier run prepared is left as it was.
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir()} == before


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
        prepare.list_images(root)
    assert "\n" not in str(err.value)


def test_a_split_too_small_for_every_class_is_refused(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("L", (8, 8), color=i * 40).save(tmp_path / name / f"{i}.png")
    _, labels, names = prepare.list_labelled(tmp_path)
    with pytest.raises(UserError, match="fewer than the 3 classes"):
        prepare.split_indices(labels, len(names), 0.1, 0.2, seed=0)


@pytest.mark.parametrize("key, value, message", [
    ("image_size", 4, "at least 8"), ("channels", 2, "1 .grayscale. or 3"), ("val_fraction", 0, "between 0 and 1"),
    ("test_fraction", 0.7, "below 1"), ("max_bad_share", 1.0, r"\[0, 1\)"), ("max_images_per_class", 0, "positive"),
    ("images_per_shard", 0, "images_per_shard must be a positive integer"),
])
def test_data_config_errors(key, value, message):
    cfg = {**CFG, key: value}
    if key == "test_fraction":
        cfg["val_fraction"] = 0.5
    with pytest.raises(UserError, match=message):
        settings.parse("data", cfg)


def test_a_class_too_small_for_a_stratified_split_is_named_instead_of_a_scikit_learn_traceback():
    # 9 images at a third each: scikit-learn rounds the test split up to 4, so one class gives it two and keeps
    # one for train and val, which the second stratified split refuses with a ValueError.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    with pytest.raises(UserError, match=r"class '[abc]' has 3 images, too few to give each of train, val and test one"):
        prepare.split_indices(labels, 3, 0.34, 0.34, seed=0, class_names=["a", "b", "c"])


def test_a_split_left_without_a_class_says_so_rather_than_blame_corrupt_files():
    # 15 % of 51 images: the stratified split rounds the 3-image class's share of val down to none.
    labels = np.array([0] * 24 + [1] * 24 + [2] * 3)
    with pytest.raises(UserError, match=r"gives the val split no image of class\(es\) \['c'\] \(3 image\(s\)\)"):
        prepare.split_indices(labels, 3, 0.15, 0.15, seed=0, class_names=["a", "b", "c"])
    positions = prepare.split_indices(labels, 3, 0.25, 0.25, seed=0, class_names=["a", "b", "c"])
    assert all(set(labels[held].tolist()) == {0, 1, 2} for held in positions.values())
