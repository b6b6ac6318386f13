"""The detection report's pictures: precision-recall panels, the image grid, mAP against size."""

import os
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

from compresslab.reporting.detection_plots import (MapPoint, draw_detection_grid, draw_map_tradeoff,
                                                   draw_pr_curves)

# A stand-in for compresslab.detection.postprocess.Detections: any object with these attributes is accepted.
Detections = namedtuple("Detections", "boxes scores classes")

CLASSES = ("fire", "smoke", "person")
RECALL = np.linspace(0, 1, 101).tolist()


def _detections(boxes, scores, classes):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64))


NONE = _detections([], [], [])


def _images(n=3, side=96, channels=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(n, side, side, channels)).astype(np.float32)


def _truth():
    return [np.array([[0, 0.1, 0.1, 0.5, 0.6], [1, 0.5, 0.4, 0.9, 0.95]], np.float32),
            np.zeros((0, 5), np.float32),                          # an image without objects
            np.array([[2, 0.0, 0.0, 0.3, 0.3]], np.float32)]


def _predictions():
    return {
        "baseline-float32": [_detections([[0.12, 0.1, 0.5, 0.58], [0.5, 0.4, 0.88, 0.9]], [0.91, 0.77], [0, 1]),
                             _detections([[0.2, 0.2, 0.4, 0.4]], [0.3], [1]),   # below 0.5: not drawn
                             _detections([[0.0, 0.0, 0.3, 0.32]], [0.55], [2])],
        "qat-int8": [_detections([[0.1, 0.1, 0.5, 0.6], [0.3, 0.3, 0.6, 0.6]], [0.8, 0.49], [0, 2]),
                     NONE,
                     NONE],
    }


def _curve(scale):
    return {"recall": RECALL, "precision": np.clip(1 - np.array(RECALL) ** 2 * scale, 0, 1).tolist()}


def _png_size(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _keep(path, name):
    """Also leave a copy under $DETECTION_PLOTS_DIR (when set) to look at."""
    folder = os.environ.get("DETECTION_PLOTS_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(path, "rb") as source, open(os.path.join(folder, name), "wb") as target:
            target.write(source.read())


def test_the_grid_has_one_row_per_image_and_one_column_per_label_plus_the_ground_truth(tmp_path):
    drawn = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "grid.png")
    _keep(drawn.path, "grid.png")
    assert drawn.shape == (3, 3)
    assert drawn.columns == ("ground truth", "baseline-float32", "qat-int8")
    width, height = _png_size(drawn.path)
    assert 900 <= width <= 1500 and 900 <= height <= 1400


def test_the_grid_draws_every_ground_truth_box_and_only_detections_at_or_above_the_threshold(tmp_path):
    drawn = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "grid.png")
    assert drawn.boxes == ((2, 2, 1), (0, 0, 0), (1, 1, 0))
    assert drawn.boxes_per_column == {"ground truth": 3, "baseline-float32": 3, "qat-int8": 1}


def test_a_lower_threshold_draws_the_low_scoring_detections_too(tmp_path):
    drawn = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "grid.png",
                                score_threshold=0.3)
    assert drawn.boxes_per_column == {"ground truth": 3, "baseline-float32": 4, "qat-int8": 2}


def test_the_grid_shows_at_most_max_images_rows_of_grayscale_images(tmp_path):
    images = _images(n=3, side=32, channels=1)
    drawn = draw_detection_grid(images, _truth(), _predictions(), CLASSES, tmp_path / "grid.png", max_images=2)
    assert drawn.shape == (2, 3)
    assert len(drawn.boxes) == 2


def test_the_grid_does_not_fail_on_empty_detections_images_without_objects_or_no_images(tmp_path):
    empty = {"baseline-float32": [NONE] * 3}
    truth = [np.zeros((0, 5), np.float32)] * 3
    drawn = draw_detection_grid(_images(), truth, empty, CLASSES, tmp_path / "empty.png")
    assert drawn.boxes == ((0, 0),) * 3
    _png_size(drawn.path)
    none = draw_detection_grid(np.zeros((0, 96, 96, 3)), [], {"baseline-float32": []}, CLASSES, tmp_path / "none.png")
    assert none.boxes == ()
    _png_size(none.path)


def test_the_grid_writes_an_unknown_class_id_instead_of_failing(tmp_path):
    truth = [np.array([[7, 0.1, 0.1, 0.4, 0.4]], np.float32)]
    drawn = draw_detection_grid(_images(n=1), truth, {"a-int8": [_detections([[0.1, 0.1, 0.4, 0.4]], [0.9], [9])]},
                                CLASSES, tmp_path / "grid.png")
    assert drawn.boxes == ((1, 1),)


def test_the_grid_refuses_fewer_detections_than_images():
    from compresslab.errors import UserError
    with pytest.raises(UserError, match="one per image"):
        draw_detection_grid(_images(), _truth(), {"a-int8": [NONE]}, CLASSES, "/nonexistent/grid.png")


def test_drawing_the_grid_twice_gives_the_same_bytes(tmp_path):
    first = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "a.png")
    second = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "b.png")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert not list(tmp_path.glob("*.partial"))


def _pr():
    return {
        "baseline-float32": {"fire": _curve(0.3), "smoke": _curve(0.45), "person": _curve(0.9)},
        "qat-int8": {"fire": _curve(0.5), "smoke": None, "person": _curve(1.2)},           # a class with None
        "pruned-int8": {"fire": _curve(0.8)},                                              # a missing class
        "cqat-int8": {"fire": {"recall": RECALL, "precision": [-1.0] * 101}},               # COCO's "no ground truth"
    }


def test_pr_curves_draw_one_panel_per_label_in_a_grid_and_skip_missing_classes(tmp_path):
    drawn = draw_pr_curves(_pr(), tmp_path / "pr.png")
    _keep(drawn.path, "pr.png")
    assert drawn.panels == ("baseline-float32", "qat-int8", "pruned-int8", "cqat-int8")
    assert drawn.shape == (2, 3)
    assert drawn.curves == {"baseline-float32": 3, "qat-int8": 2, "pruned-int8": 1, "cqat-int8": 0}
    width, height = _png_size(drawn.path)
    assert 1400 <= width <= 2000 and 900 <= height <= 1300


def test_pr_curves_are_the_same_bytes_twice_and_an_empty_input_still_writes_a_picture(tmp_path):
    first = draw_pr_curves(_pr(), tmp_path / "a.png")
    second = draw_pr_curves(_pr(), tmp_path / "b.png")
    assert first.path.read_bytes() == second.path.read_bytes()
    empty = draw_pr_curves({}, tmp_path / "empty.png")
    assert empty.panels == () and empty.curves == {}
    _png_size(empty.path)


def _points():
    return [MapPoint("baseline-float32", 900.0, 0.42, (0.39, 0.45)),
            MapPoint("baseline-int8", 240.0, 0.40, (0.37, 0.43)),
            MapPoint("qat-int8", 235.0, 0.41, (0.38, 0.44)),
            {"label": "pruned-int8", "kb": 80.0, "map": 0.33, "interval": (0.30, 0.36)},
            {"label": "clustered-float16", "kb": 300.0, "map": 0.30, "interval": None}]


def test_the_map_tradeoff_is_written_as_a_png_of_the_report_plots_size(tmp_path):
    path = draw_map_tradeoff(_points(), tmp_path / "map.png", band=(0.39, 0.45), band_label="baseline-float32")
    _keep(path, "map.png")
    width, height = _png_size(path)
    assert (width, height) == (1350, 825)   # 9 x 5.5 inches at 150 dpi, as plots.plot_tradeoff


def test_the_map_tradeoff_is_the_same_bytes_twice_and_draws_no_data_without_failing(tmp_path):
    first = draw_map_tradeoff(_points(), tmp_path / "a.png", band=(0.39, 0.45))
    second = draw_map_tradeoff(_points(), tmp_path / "b.png", band=(0.39, 0.45))
    assert first.read_bytes() == second.read_bytes()
    without_band = draw_map_tradeoff(_points(), tmp_path / "c.png")
    assert without_band.read_bytes() != first.read_bytes()
    _png_size(draw_map_tradeoff([MapPoint("a-int8", 0.0, 0.3)], tmp_path / "none.png"))


def test_the_ground_truth_outlined_under_the_detections_is_not_counted_as_a_box(tmp_path):
    plain = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "a.png", overlay_truth=False)
    overlaid = draw_detection_grid(_images(), _truth(), _predictions(), CLASSES, tmp_path / "b.png")
    assert plain.boxes == overlaid.boxes
    assert plain.path.read_bytes() != overlaid.path.read_bytes()
