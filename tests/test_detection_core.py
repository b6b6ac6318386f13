"""Detection core: box encoding, anchor targets, losses, decoding with NMS, and COCO scoring with bootstrap
intervals, on inputs whose answers are known by construction."""

import subprocess
import sys

import numpy as np
import pytest

import compresslab  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from compresslab.detection import boxes as geometry
from compresslab.detection import coco_metrics
from compresslab.detection.anchors import AnchorSpec
from compresslab.detection.postprocess import Detections, detect, from_json, nms, to_json

SIZE = 320
NAMES = ["digit", "letter", "shape"]


def synthetic(images: int, seed: int, classes: int = 3, jitter: float = 0.1, missed: float = 0.2,
              false_alarms: int = 2):
    """Ground truth and imperfect detections: boxes jittered by `jitter` of their size, some missed, some given
    the wrong class, plus low-scored false alarms. Boxes are always valid (positive size, inside the image)."""
    rng = np.random.default_rng(seed)
    truth, found = [], []
    for _ in range(images):
        n = rng.integers(0, 4)
        size = rng.uniform(0.1, 0.3, (n, 2))
        top_left = rng.uniform(0, 0.65, (n, 2))
        cls = rng.integers(0, classes, n)
        truth.append(np.column_stack([cls, top_left, top_left + size]).astype(np.float32))
        kept = rng.random(n) > missed
        centre = top_left[kept] + size[kept] / 2 + rng.normal(0, jitter, (kept.sum(), 2)) * size[kept]
        side = size[kept] * np.exp(rng.normal(0, jitter, (kept.sum(), 2)))
        alarm_corner = rng.uniform(0, 0.7, (false_alarms, 2))
        corners = np.concatenate([np.column_stack([centre - side / 2, centre + side / 2]),
                                  np.column_stack([alarm_corner, alarm_corner + 0.2])])
        labels = np.concatenate([np.where(rng.random(kept.sum()) < 0.1, rng.integers(0, classes, kept.sum()),
                                          cls[kept]), rng.integers(0, classes, false_alarms)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, kept.sum()), rng.uniform(0.0, 0.6, false_alarms)])
        found.append(Detections(np.clip(corners, 0, 1).astype(np.float32), scores.astype(np.float32),
                                labels.astype(np.int64)))
    return truth, found


def perfect(truth):
    return [Detections(t[:, 1:].copy(), np.linspace(0.9, 0.5, len(t)).astype(np.float32), t[:, 0].astype(np.int64))
            for t in truth]


# ---- boxes ------------------------------------------------------------------------------------------------

def test_encoding_then_decoding_gives_back_the_boxes():
    corners = np.array([[0.1, 0.2, 0.5, 0.4], [0.0, 0.0, 1.0, 1.0], [0.3, 0.6, 0.35, 0.9]], np.float32)
    anchors = np.array([[0.3, 0.3, 0.4, 0.2], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.1, 0.3]], np.float32)
    deltas = geometry.encode(corners, anchors)
    assert not np.allclose(deltas, 0)
    np.testing.assert_allclose(geometry.decode(deltas, anchors), corners, atol=1e-6)
    np.testing.assert_allclose(geometry.to_corners(geometry.to_centre(corners)), corners, atol=1e-7)


def test_iou_of_known_boxes():
    a = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    b = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.25, 0.5, 0.75], [0.1, 0.1, 0.2, 0.2]])
    np.testing.assert_allclose(geometry.iou(a, b), [[1.0, 0.0, 1 / 3, 0.04]], atol=1e-6)


# ---- targets and losses (TensorFlow) ---------------------------------------------------------------------

SPEC = AnchorSpec(image_size=32, strides=(8,), sizes=((0.25,),), aspect_ratios=(1.0,))  # 4x4 cells, 16 anchors


def targets_of(truth, num_classes=2, spec=SPEC, **kwargs):
    from compresslab.detection.targets import make_targets

    _, wanted = make_targets(spec, num_classes, **kwargs)(np.zeros((32, 32, 3), np.float32),
                                                          np.asarray(truth, np.float32).reshape(-1, 5))
    return wanted["boxes"].numpy(), wanted["scores"].numpy()


def test_an_anchor_equal_to_a_ground_truth_box_is_positive_with_zero_deltas():
    anchor = SPEC.boxes()[5]
    box, score = targets_of([[1, *geometry.to_corners(anchor)]])
    assert box.shape == (16, 5) and score.shape == (16, 3)
    assert box[5, 4] == 1 and np.abs(box[5, :4]).max() < 1e-5
    np.testing.assert_array_equal(score[5], [0, 1, 1])
    assert box[:, 4].sum() == 1  # the neighbours overlap it by less than 0.4: negatives
    np.testing.assert_array_equal(score[np.arange(16) != 5], np.tile([0, 0, 1], (15, 1)))


def test_a_box_smaller_than_every_anchor_still_gets_one_positive_anchor():
    box, score = targets_of([[0, 0.60, 0.60, 0.62, 0.61]])  # IoU with every anchor far below 0.5
    assert box[:, 4].sum() == 1
    positive = int(np.argmax(box[:, 4]))
    np.testing.assert_allclose(geometry.decode(box[positive, :4], SPEC.boxes()[positive]),
                               [0.60, 0.60, 0.62, 0.61], atol=1e-5)
    np.testing.assert_array_equal(score[positive], [1, 0, 1])


@pytest.mark.parametrize("truth", [np.zeros((0, 5)), -np.ones((3, 5))], ids=["no objects", "padding rows"])
def test_padding_rows_and_images_without_objects_give_all_negative_targets(truth):
    box, score = targets_of(truth)
    np.testing.assert_array_equal(box, 0)
    np.testing.assert_array_equal(score, np.tile([0, 0, 1], (16, 1)))


def test_anchors_between_the_ignore_and_match_iou_are_ignored():
    # Two concentric anchor sizes per cell, the larger overlapping a box equal to the smaller at IoU 0.45
    # (concentric squares: IoU = (small / large) ** 2): in the ignore band, and not the box's best anchor.
    spec = AnchorSpec(image_size=32, strides=(8,), sizes=((0.25, 0.25 / np.sqrt(0.45)),), aspect_ratios=(1.0,))
    anchors = spec.boxes()
    small, large = 10, 11  # cell 5, both sizes
    box, score = targets_of([[0, *geometry.to_corners(anchors[small])]], spec=spec)
    assert geometry.iou(geometry.to_corners(anchors[small])[None],
                        geometry.to_corners(anchors[large])[None])[0, 0] == pytest.approx(0.45, abs=1e-5)
    assert box[small, 4] == 1 and score[small, 2] == 1
    assert box[large, 4] == 0 and score[large].tolist() == [0, 0, 0]  # ignored: weight 0
    others = np.ones(32, bool)
    others[[small, large]] = False
    assert not box[others, 4].any() and (score[others, 2] == 1).all()  # the rest are negatives


def test_box_loss_is_zero_when_predictions_equal_targets():
    from compresslab.detection.targets import detection_losses

    box, score = targets_of([[1, 0.1, 0.1, 0.4, 0.3], [0, 0.5, 0.5, 0.9, 0.95]])
    losses = detection_losses(2)
    assert float(losses["boxes"](box[None], box[None, :, :4])) == 0.0
    assert float(losses["boxes"](box[None], box[None, :, :4] + 0.5)) > 0
    # The focal loss of confident, right scores is near 0; of confident, wrong ones it is large.
    right = np.clip(score[None, :, :2], 1e-4, 1 - 1e-4)
    assert float(losses["scores"](score[None], right)) < 1e-3 < float(losses["scores"](score[None], 1 - right))


def test_losses_are_normalised_by_the_positive_anchors_of_the_batch():
    from compresslab.detection.targets import detection_losses

    one, _ = targets_of([[1, 0.1, 0.1, 0.4, 0.3]])
    two, _ = targets_of([[1, 0.1, 0.1, 0.4, 0.3], [0, 0.5, 0.5, 0.9, 0.95]])
    batch = np.stack([one, two])
    predictions = batch[..., :4] + 0.25  # Huber 0.5 * 0.25^2 per coordinate, 4 per positive anchor
    per_anchor = 4 * 0.5 * 0.25 ** 2
    positives = batch[..., 4].sum()
    assert positives >= 3
    # Keras averages per-image values over the batch; that mean must be the sum over positives / positives.
    assert float(detection_losses(2)["boxes"](batch, predictions)) == pytest.approx(per_anchor, rel=1e-5)


def tiny_detector(spec, num_classes):
    import tf_keras as keras

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    features = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(features)  # 8x8 cells
    box = keras.layers.Conv2D(spec.per_location * 4, 1)(features)
    score = keras.layers.Conv2D(spec.per_location * num_classes, 1)(features)
    box = keras.layers.Reshape((-1, 4), name="boxes")(box)
    score = keras.layers.Activation("sigmoid", name="scores")(keras.layers.Reshape((-1, num_classes))(score))
    return keras.Model(inputs, [box, score])


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_a_tiny_detector_learns_with_the_losses_and_saves_to_hdf5(tmp_path):
    import tensorflow as tf
    import tf_keras as keras

    from compresslab.detection.targets import detection_losses, make_targets

    tf.keras.utils.set_random_seed(0)
    spec = AnchorSpec(image_size=32, strides=(4,), sizes=((0.3,),), aspect_ratios=(1.0, 2.0))  # 128 anchors
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    truth = np.array([[0, 0.1, 0.1, 0.45, 0.4], [1, 0.5, 0.6, 0.9, 0.85], [-1, -1, -1, -1, -1]], np.float32)
    data = tf.data.Dataset.from_tensors((image, truth)).map(make_targets(spec, 2)).repeat(2).batch(2)
    model = tiny_detector(spec, 2)
    model.compile(keras.optimizers.Adam(0.01), loss=detection_losses(2))
    before = model.evaluate(data, verbose=0)  # [total, boxes, scores]
    history = model.fit(data.repeat(12), epochs=1, verbose=0)
    after = model.evaluate(data, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(after).all()
    assert after[0] < 0.5 * before[0] and after[1] < before[1] and after[2] < before[2]
    model.save(tmp_path / "detector.h5")
    for compile in (False, True):
        loaded = keras.models.load_model(tmp_path / "detector.h5", compile=compile)
        np.testing.assert_allclose(loaded.predict_on_batch(image[None])[1], model.predict_on_batch(image[None])[1],
                                   atol=1e-6)
    assert loaded.loss["scores"].num_classes == 2  # the focal loss came back with its configuration


# ---- postprocess (NumPy) ---------------------------------------------------------------------------------

def test_nms_removes_a_duplicate_box_and_keeps_a_distinct_one():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.11, 0.1, 0.5, 0.51], [0.6, 0.6, 0.9, 0.9]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 100).tolist() == [0, 2]
    assert nms(boxes, np.array([0.6, 0.8, 0.7]), 0.5, 100).tolist() == [1, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, 1).tolist() == [0]


def test_detect_decodes_thresholds_suppresses_per_class_and_keeps_the_best():
    anchors = np.array([[0.3, 0.3, 0.4, 0.4], [0.31, 0.3, 0.4, 0.4], [0.7, 0.7, 0.2, 0.2]], np.float32)
    raw = np.zeros((2, 3, 4), np.float32)  # each box is its anchor
    scores = np.array([[[0.9, 0.01], [0.8, 0.6], [0.02, 0.3]],
                       [[0.01, 0.01], [0.01, 0.01], [0.01, 0.01]]], np.float32)
    found = detect(raw, scores, anchors, score_threshold=0.05, iou_threshold=0.5)
    # Class 0: anchor 1 duplicates anchor 0 and goes; class 1 keeps anchor 1 (other classes never suppress).
    assert found[0].scores.tolist() == pytest.approx([0.9, 0.6, 0.3])
    assert found[0].classes.tolist() == [0, 1, 1]
    np.testing.assert_allclose(found[0].boxes[0], geometry.to_corners(anchors[0]), atol=1e-6)
    assert len(found[1]) == 0 and found[1].boxes.shape == (0, 4)
    assert detect(raw, scores, anchors, max_detections=2)[0].scores.tolist() == pytest.approx([0.9, 0.6])
    back = from_json(to_json(found))
    assert len(back) == 2 and back[0].classes.tolist() == [0, 1, 1] and len(back[1]) == 0
    np.testing.assert_allclose(back[0].boxes, found[0].boxes, atol=1e-5)


def test_postprocess_and_scoring_import_without_tensorflow():
    code = ("import compresslab.detection.postprocess, compresslab.detection.coco_metrics, sys; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- COCO scoring and bootstrap ---------------------------------------------------------------------------

TRUTH, FOUND = synthetic(40, seed=1)


def test_perfect_detections_score_exactly_one():
    result = coco_metrics.score(TRUTH, perfect(TRUTH), NAMES, SIZE)
    assert result["map"] == result["map50"] == result["map75"] == result["ar100"] == 1.0
    assert set(result["per_class_ap"].values()) == {1.0}
    assert result["precision"] == result["recall"] == 1.0
    assert result["images"] == 40 and result["objects"] == sum(len(t) for t in TRUTH)
    curve = result["pr_curves"]["digit"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101 and set(curve["precision"]) == {1.0}


def test_a_box_at_iou_0_6_counts_at_0_5_but_not_at_0_75():
    truth = [np.array([[0, 0.2, 0.2, 0.6, 0.6]], np.float32)]
    shifted = Detections(np.array([[0.2, 0.3, 0.6, 0.7]], np.float32), np.array([0.9], np.float32),
                         np.array([0]))  # side 0.4 moved 0.1: IoU = 0.3 / 0.5
    assert geometry.iou(truth[0][:, 1:], shifted.boxes)[0, 0] == pytest.approx(0.6)
    result = coco_metrics.score(truth, [shifted], NAMES, SIZE)
    assert result["map50"] == 1.0 and result["map75"] == 0.0
    assert result["per_class_ap"]["letter"] is None  # no ground truth: COCO's -1, not a 0 in the mean
    assert result["pr_curves"]["letter"] is None


def test_no_detections_at_all_score_zero_without_error():
    result = coco_metrics.score(TRUTH, [Detections.empty() for _ in TRUTH], NAMES, SIZE)
    assert result["map"] == result["map50"] == result["ar100"] == result["precision"] == result["recall"] == 0.0
    assert coco_metrics.bootstrap_interval(TRUTH, [Detections.empty() for _ in TRUTH], NAMES, SIZE,
                                           samples=50) == (0.0, 0.0)


def test_a_wrong_class_scores_zero_for_that_class():
    truth = [np.array([[0, 0.1, 0.1, 0.4, 0.4], [1, 0.5, 0.5, 0.9, 0.9]], np.float32)]
    found = [Detections(truth[0][:, 1:], np.array([0.9, 0.8], np.float32), np.array([0, 2]))]  # 1 called 2
    result = coco_metrics.score(truth, found, NAMES, SIZE)
    assert result["per_class_ap"] == {"digit": 1.0, "letter": 0.0, "shape": None}
    assert result["map"] == pytest.approx(0.5)
    assert result["precision"] == result["recall"] == 0.5


def test_precision_and_recall_count_only_detections_above_the_score_threshold():
    truth = [np.array([[0, 0.1, 0.1, 0.4, 0.4], [0, 0.5, 0.5, 0.9, 0.9]], np.float32)]
    found = [Detections(np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.6, 0.2, 0.9]], np.float32),
                        np.array([0.9, 0.3, 0.7], np.float32), np.array([0, 0, 0]))]
    result = coco_metrics.score(truth, found, NAMES, SIZE, score_threshold=0.5)
    assert result["precision"] == 0.5 and result["recall"] == 0.5  # TP 1, FP 1 (0.7), FN 1 (scored 0.3)


@pytest.mark.parametrize("seed, images, jitter", [(0, 30, 0.05), (1, 60, 0.15), (2, 25, 0.3), (3, 50, 0.0)])
def test_the_accumulation_on_reweighted_images_equals_faster_coco_eval(seed, images, jitter):
    truth, found = synthetic(images, seed, jitter=jitter)
    expected = coco_metrics.score(truth, found, NAMES, SIZE)["map"]
    matches = coco_metrics.Matches(truth, found, len(NAMES), SIZE)
    assert matches.map(np.ones((1, images)))[0] == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected < 1.0  # not a trivial case
    # Drawing an image twice is scored as two distinct images: the same as COCO on an explicit copy.
    weights = np.ones(images)
    weights[[0, 3]], weights[5] = 2, 0
    drawn = [i for i in range(images) for _ in range(int(weights[i]))]
    copied = coco_metrics.score([truth[i] for i in drawn], [found[i] for i in drawn], NAMES, SIZE)["map"]
    assert matches.map(weights[None])[0] == pytest.approx(copied, abs=1e-6)


def test_the_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images():
    widths = []
    for images in (30, 240):
        truth, found = synthetic(images, seed=images)
        estimate = coco_metrics.score(truth, found, NAMES, SIZE)["map"]
        low, high = coco_metrics.bootstrap_interval(truth, found, NAMES, SIZE, samples=400, seed=0)
        assert low < estimate < high
        assert (low, high) == coco_metrics.bootstrap_interval(truth, found, NAMES, SIZE, samples=400, seed=0)
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]


def test_a_paired_bootstrap_of_a_file_against_itself_is_zero_and_not_significant():
    result = coco_metrics.paired_bootstrap(TRUTH, FOUND, FOUND, NAMES, SIZE, samples=200)
    assert result == {"delta": 0.0, "low": 0.0, "high": 0.0, "significant": False}


def test_a_paired_bootstrap_finds_half_missing_detections_significantly_worse():
    complete = perfect(TRUTH)
    half = [Detections(d.boxes[::2], d.scores[::2], d.classes[::2]) for d in complete]
    result = coco_metrics.paired_bootstrap(TRUTH, complete, half, NAMES, SIZE, samples=300)
    assert result["delta"] > 0.2 and result["significant"] and result["low"] > 0


DISTRIBUTED = """
import sys
import numpy as np
import compresslab
import tensorflow as tf
import tf_keras as keras
sys.path.insert(0, sys.argv[1])
from test_detection_core import tiny_detector
from compresslab.detection.anchors import AnchorSpec
from compresslab.detection.targets import detection_losses, make_targets

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
spec = AnchorSpec(image_size=32, strides=(4,), sizes=((0.3,),), aspect_ratios=(1.0,))
rng = np.random.default_rng(0)
images = rng.random((4, 32, 32, 3)).astype(np.float32)
truth = -np.ones((4, 3, 5), np.float32)  # 3, 1, 0 and 2 objects: the replicas' halves hold 4 and 2
for i, n in enumerate([3, 1, 0, 2]):
    corner = rng.uniform(0, 0.6, (n, 2))
    truth[i, :n] = np.column_stack([rng.integers(0, 2, n), corner, corner + 0.3])
data = tf.data.Dataset.from_tensor_slices((images, truth)).map(make_targets(spec, 2)).batch(4)
single = tiny_detector(spec, 2)
single.compile(loss=detection_losses(2))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = tiny_detector(spec, 2)
    mirrored.compile(loss=detection_losses(2))
mirrored.set_weights(single.get_weights())
expected, got = single.evaluate(data, verbose=0), mirrored.evaluate(data, verbose=0)
assert strategy.num_replicas_in_sync == 2
assert np.allclose(expected, got, rtol=1e-5), (expected, got)
print("same", expected, got)
"""


def test_the_losses_give_the_same_value_on_two_replicas_as_on_one(tmp_path):
    """Under MirroredStrategy each replica sees half the batch with its own count of positives; the losses
    all-reduce that count, so the loss is the global sum over the global positives, as on one device."""
    from pathlib import Path

    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED)
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same" in done.stdout
