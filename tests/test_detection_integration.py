"""The detection task's seams with the shared pipeline: its configuration, layer words, the zoo, a converted
detector read by LiteRT, and the scoring of evaluated files (the whole pipeline runs in
test_detection_pipeline.py)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

import compresslab  # noqa: F401  (prepares the environment before TensorFlow is imported)
from compresslab import settings
from compresslab.detection.postprocess import Detections
from compresslab.errors import UserError

DATA = {"image_size": 64, "channels": 3, "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0,
        "max_bad_share": 0.05}


def test_a_detection_data_group_validates_and_refuses_what_cannot_apply():
    cfg = settings.parse("data", {**DATA, "task": "detection", "raw": "data/raw_detection", "format": "coco"})
    assert cfg.task == "detection" and cfg.annotation_format == "coco"
    assert settings.parse("data", {**DATA, "task": "detection"}).annotation_format == "voc"
    with pytest.raises(UserError, match=r"data.task='segmentation' is not a task"):
        settings.parse("data", {**DATA, "task": "segmentation"})
    with pytest.raises(UserError, match=r"set data.task=detection"):
        settings.parse("data", {**DATA, "format": "voc"})


def test_anchors_are_checked_at_the_boundary():
    cfg = settings.parse("model", {"name": "ssdlite_mobilenetv2",
                                   "anchors": {"strides": [8, 16], "sizes": [[0.1], [0.2]], "aspect_ratios": [1]}})
    assert cfg.anchors.match_iou == 0.5
    with pytest.raises(UserError, match=r"model.anchors.strides=\[16, 8\] must be an increasing list"):
        settings.parse("model", {"name": "x", "anchors": {"strides": [16, 8], "sizes": [[0.1], [0.2]],
                                                          "aspect_ratios": [1]}})
    with pytest.raises(UserError, match=r"model.anchors.sizes=\[\[1.5\]\]"):
        settings.parse("model", {"name": "x", "anchors": {"strides": [8], "sizes": [[1.5]], "aspect_ratios": [1]}})


def test_a_model_of_the_other_task_is_named_as_such():
    from compresslab.models import zoo

    with pytest.raises(UserError, match=r"model=firenet is a classification model but data.task=detection"):
        zoo.build_model({"name": "firenet"}, (64, 64, 3), 10, task="detection")
    with pytest.raises(UserError, match=r"model=yolo_grid is a detection model but data.task=classification"):
        zoo.build_model({"name": "yolo_grid"}, (64, 64, 3), 10)


def test_backbone_and_head_pick_a_detectors_layers_and_need_one():
    from compresslab.models import detectors
    from compresslab.techniques.layers import select_layers
    from conftest import firenet_like

    model = detectors.yolo_grid((64, 64, 3), 3, {"name": "yolo_grid", "width": 4})
    head = select_layers(model, "head", "prune.layers")
    backbone = select_layers(model, "backbone", "prune.layers")
    assert head and all(name.startswith(("boxes_", "scores_")) for name in head)
    assert backbone and not set(head) & set(backbone)
    assert sorted(head + backbone) == sorted(select_layers(model, "all", "prune.layers"))
    with pytest.raises(UserError, match=r"prune.layers='head' needs a detector"):
        select_layers(firenet_like(), "head", "prune.layers")


def test_a_converted_detector_is_decoded_like_its_keras_model(tmp_path):
    """LiteRT finds the box and score outputs by the file's signature, and the file's boxes are the Keras
    model's boxes (float32: the same numbers)."""
    from compresslab.detection import keras_model
    from compresslab.models import detectors
    from compresslab.tflite import converter, runtime
    from compresslab.tflite.measure import Decoding

    model = detectors.ssdlite_mobilenetv2((64, 64, 3), 4, {"name": "ssdlite_mobilenetv2", "alpha": 0.35})
    path = tmp_path / "baseline-float32.tflite"
    path.write_bytes(converter.convert(model, "float32"))
    images = np.random.default_rng(0).uniform(0, 1, (5, 64, 64, 3)).astype(np.float32)
    interpreter = runtime.load_interpreter(path)
    boxes, scores = runtime.predict_detector(interpreter, images, batch_size=2)
    keras_boxes, keras_scores = model.predict_on_batch(images)
    spec = detectors.anchors_for({"name": "ssdlite_mobilenetv2"}, 64)
    assert boxes.shape == (5, spec.count, 4) and scores.shape == (5, spec.count, 4)
    np.testing.assert_allclose(boxes, keras_boxes, atol=1e-4)
    np.testing.assert_allclose(scores, keras_scores, atol=1e-5)
    decoding = Decoding(anchors=spec.boxes(), class_names=("a", "b", "c", "d"), image_size=64)
    found = decoding.detect(interpreter, images)
    expected = keras_model.keras_detections(model, images, spec)
    assert len(found) == 5 and all(np.allclose(a.scores, b.scores, atol=1e-4) for a, b in zip(found, expected))
    with pytest.raises(Exception, match="only single-input, single-output"):
        runtime.predict(interpreter, images)


def detections_of(ground_truth, shift=0.0, drop=False):
    """Boxes equal to the ground truth (shifted right by `shift` of the side), or none."""
    found = []
    for boxes in ground_truth:
        if drop or not len(boxes):
            found.append(Detections.empty())
            continue
        corners = boxes[:, 1:].copy()
        corners[:, [1, 3]] += shift
        found.append(Detections(corners.astype(np.float32), np.full(len(boxes), 0.9, np.float32),
                                boxes[:, 0].astype(np.int64)))
    return found


def test_scoring_gives_intervals_paired_changes_and_per_class_ap():
    from compresslab.reporting import detection_scoring

    rng = np.random.default_rng(0)
    truth = []
    for _ in range(40):
        y, x = rng.uniform(0.1, 0.5, 2)
        truth.append(np.array([[rng.integers(0, 3), y, x, y + 0.3, x + 0.3]], np.float32))
    perfect, shifted = detections_of(truth), detections_of(truth, shift=0.3 / 4)   # IoU 0.6
    rows = [{"variant": "baseline", "mode": "float32", "gzip_bytes": 1000, "detections": None},
            {"variant": "finetune", "mode": "float32", "gzip_bytes": 1000, "detections": None},
            {"variant": "pruned", "mode": "int8", "gzip_bytes": 250, "detections": None}]
    detections = {"baseline-float32": perfect, "finetune-float32": perfect, "pruned-int8": shifted}
    for row in rows:
        row.pop("detections")
    scored = detection_scoring.score_rows(rows, detections, truth, ["0", "1", "2"], 64, score_threshold=0.5,
                                          samples=200, latency_threads=1)
    baseline, control, pruned = rows
    assert baseline["map"] == pytest.approx(1.0) and baseline["map_delta_pp"] == 0 and not baseline["significant"]
    assert pruned["map50"] == pytest.approx(1.0) and pruned["map75"] == pytest.approx(0.0)
    assert pruned["map_ci_low"] <= pruned["map"] <= pruned["map_ci_high"]
    assert pruned["map_delta_pp"] < 0 and pruned["significant"] and pruned["gzip_ratio"] == 0.25
    assert "map_delta_control_pp" not in pruned   # no int8 control in these rows
    assert set(scored["pruned-int8"]["per_class_ap50"]) == {"0", "1", "2"}
    assert pruned["ap50_0"] == pytest.approx(1.0)
    notes = detection_scoring.uncertainty_notes(rows)
    assert any("collapsed" in note for note in notes)   # int8 at less than half of baseline-float32's mAP


def test_a_detection_run_is_selected_by_its_map_on_the_validation_split():
    from compresslab.results import selection
    from compresslab.results.record import Record

    files = {("finetune", "float32"): Record("finetune", "float32", map=0.5, val_map=0.60),
             ("pruned", "int8"): Record("pruned", "int8", map=0.49, val_map=0.595)}
    drop = selection.measure_drop(files, ("pruned", "int8"))
    assert drop.split == "val" and drop.drop_pp == pytest.approx(0.5) and drop.test_drop_pp == pytest.approx(1.0)


def test_the_detection_presets_compose_and_validate(tmp_path):
    from compresslab.tools.search_request import composed_params
    from pathlib import Path

    for preset in ("ssd_study", "yolo_study", "ssd_coco_study", "detection_smoke"):
        composed = OmegaConf.create(composed_params(Path(__file__).resolve().parents[1], [f"experiment={preset}"]))
        typed = dict(zip(settings.GROUPS, settings.read(composed, *settings.GROUPS)))
        assert typed["data"].task == "detection", preset
        assert typed["model"].name in ("ssdlite_mobilenetv2", "yolo_grid"), preset
