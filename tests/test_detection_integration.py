"""The detection task's seams with the shared pipeline: its configuration, layer words, the zoo, a converted
detector read by LiteRT, and the scoring of evaluated files (the whole pipeline runs in
test_detection_pipeline.py)."""

from pathlib import Path

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
    assert settings.parse("model", {"name": "x", "nms": {"iou": 0.6}}).nms.max_detections == 100
    with pytest.raises(UserError, match=r"model.nms.iou must lie in \(0, 1\), got 1.5"):
        settings.parse("model", {"name": "x", "nms": {"iou": 1.5}})
    # decoding is the model's: evaluate no longer takes NMS keys
    with pytest.raises(UserError, match=r"evaluate has unknown key\(s\) \['nms_iou'\]"):
        settings.parse("evaluate", {"threads": [1], "warmup_runs": 1, "min_runs": 1, "min_seconds": 0,
                                    "nms_iou": 0.5})


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
    from compresslab.settings import ModelConfig
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
    decoder = keras_model.decoder_of(ModelConfig(name="ssdlite_mobilenetv2", nms={"iou": 0.4, "max_detections": 7}), 64)
    assert (decoder.iou_threshold, decoder.max_detections) == (0.4, 7)
    np.testing.assert_array_equal(decoder.anchors, spec.boxes())
    decoding = Decoding(decoder, class_names=("a", "b", "c", "d"), image_size=64)
    found = decoding.detect(interpreter, images)
    expected = keras_model.keras_detections(model, images, decoder)
    eager = keras_model.keras_detections(model, images, decoder, fresh_model=True)
    assert len(found) == 5 and all(len(a) <= 7 for a in found)
    assert all(np.allclose(a.scores, b.scores, atol=1e-4) for a, b in zip(found, expected))
    assert all(np.allclose(a.scores, b.scores, atol=1e-5) for a, b in zip(eager, expected))
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


    for preset in ("ssd_study", "yolo_study", "ssd_coco_study", "detection_smoke"):
        composed = OmegaConf.create(composed_params(Path(__file__).resolve().parents[1], [f"experiment={preset}"]))
        typed = dict(zip(settings.GROUPS, settings.read(composed, *settings.GROUPS)))
        assert typed["data"].task == "detection", preset
        assert typed["model"].name in ("ssdlite_mobilenetv2", "yolo_grid"), preset


def annotate_with_own_detections(model, decoder, raw: Path, size: int) -> None:
    """Rewrite the VOC folder's annotations as `model`'s best box on each image: a data set the model detects
    well by construction, so that its mAP is high before any training and a damaged layer shows as a drop."""
    from compresslab.data import shards
    from compresslab.data.prepare import decode_image

    for path in sorted((raw / "JPEGImages").iterdir()):
        image = shards.to_model_input(decode_image(path, size, 3))[None]
        best = decoder.detect_batches(lambda batch: model.predict_on_batch(batch), [image])[0]
        y0, x0, y1, x1 = (np.clip(best.boxes[0], 0, 1) * size).round().astype(int)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        (raw / "Annotations" / f"{path.stem}.xml").write_text(
            f"<annotation><filename>{path.name}</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size><object><name>{best.classes[0]}</name><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")


def test_per_layer_sensitivity_scores_a_detector_by_its_validation_map(tmp_path, capsys):
    """The sensitivity stage (and prune.layers=auto) measure a detector by validation mAP, decoded with its
    model.nms as evaluate decodes its files, and its int8-alone arm runs on the detector's layers."""
    from types import SimpleNamespace

    from compresslab.data import shards
    from compresslab.data.detection_sample import write_detection_sample
    from compresslab.data.prepare_detection import prepare_detection
    from compresslab.detection import keras_model
    from compresslab.models import detectors
    from compresslab.models.seeding import seed_everything
    from compresslab.techniques import sensitivity

    model_cfg = settings.parse("model", {"name": "ssdlite_mobilenetv2", "alpha": 0.35, "nms": {"max_detections": 20}})
    seed_everything(0)   # the same weights whatever ran before in this process
    model = detectors.ssdlite_mobilenetv2((64, 64, 3), 10, model_cfg.model_dump(exclude_none=True))
    for layer in model.layers:   # scores near 0.5 instead of the 0.01 prior: boxes to score before any training
        if layer.name in ("scores_8", "scores_16"):
            layer.set_weights([layer.get_weights()[0], np.zeros_like(layer.get_weights()[1])])
    decoder = keras_model.decoder_of(model_cfg, 64)
    write_detection_sample(tmp_path / "raw", images=40, size=64)
    annotate_with_own_detections(model, decoder, tmp_path / "raw", 64)
    prepare_detection(tmp_path / "raw", tmp_path / "prepared", SimpleNamespace(
        **{**DATA, "val_fraction": 0.3}, images_per_shard=64, max_images_per_class=None, format=None,
        classes=[str(digit) for digit in range(10)]))
    splits = shards.open_splits(tmp_path / "prepared")
    cfg = settings.parse("sensitivity", {"sparsity": 0.9, "quantize": True, "epochs": 0, "learning_rate": 0.001,
                                         "calibration_batches": 1, "layers": "head"})
    result = sensitivity.measure(model, splits["train"], splits["val"], cfg, batch_size=8, seed=0,
                                 model_cfg=model_cfg)
    assert result.figure == "mAP" and decoder.max_detections == 20
    # the reference is the model's own validation mAP, decoded with its model.nms
    assert result.reference_accuracy == pytest.approx(keras_model.keras_scores(model, splits["val"], decoder)["map"],
                                                      abs=1e-6)
    assert result.reference_accuracy > 0.15   # its own best boxes (ranked across images; chance is about 0)
    # the head's 1x1 predictors; its depthwise convolutions have nothing TFMOT prunes, and say so
    assert sorted(row.layer for row in result.layers) == ["boxes_16", "boxes_8", "scores_16", "scores_8"]
    assert set(result.unprunable) == {"boxes_8_depthwise", "boxes_16_depthwise", "scores_8_depthwise",
                                      "scores_16_depthwise"}
    for row in result.layers:
        assert row.int8_skipped is None and row.int8_accuracy is not None, row
        assert row.pruned_drop_pp == pytest.approx(100 * (result.reference_accuracy - row.pruned_accuracy), abs=1e-3)
        assert row.int8_drop_pp == pytest.approx(100 * (result.reference_accuracy - row.int8_accuracy), abs=1e-3)
    assert max(row.pruned_drop_pp for row in result.layers) > 1   # a head layer pruned to 90 % moves the boxes
    assert "val mAP" in capsys.readouterr().out
    with pytest.raises(TypeError, match="model config"):
        sensitivity.measure(model, splits["train"], splits["val"], cfg, batch_size=8, seed=0)
