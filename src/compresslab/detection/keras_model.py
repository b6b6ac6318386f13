"""A detector on the Keras side: its anchors from the config, the training targets its splits carry, and the
boxes the Keras model finds (what its converted files are checked against).

The stages that train or convert a detector read the `model` group for its anchors (the anchors are not stored
in the Keras file); `evaluate` reads them from `convert`'s record, so it stays free of TensorFlow.
"""

from collections.abc import Callable, Mapping

import numpy as np

from compresslab.detection.anchors import AnchorSpec
from compresslab.detection import postprocess


def anchors_of(model_cfg: Mapping, image_size: int) -> AnchorSpec:
    """The anchors of the detector `model_cfg` names, at `image_size` (the model's defaults where unset)."""
    from compresslab.models import detectors  # noqa: PLC0415  (imports TensorFlow)

    return detectors.anchors_for(dict(model_cfg), int(image_size))


def training_targets(spec: AnchorSpec, num_classes: int, match_iou: float = 0.5) -> Callable:
    """The tf.data map of one (image, boxes) element to (image, (box targets, score targets)), in the order of
    the model's outputs (Keras matches a tuple of targets to the outputs by position)."""
    from compresslab.detection.targets import make_targets  # noqa: PLC0415  (imports TensorFlow)

    encode = make_targets(spec, num_classes, match_iou=match_iou)

    def targets(image, boxes):
        image, wanted = encode(image, boxes)
        return image, (wanted["boxes"], wanted["scores"])
    return targets


def keras_detections(model, split, spec: AnchorSpec, *, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                     max_detections: int = 100, batch_size: int = 64) -> list[postprocess.Detections]:
    """The boxes the Keras detector `model` finds on every image of `split`, decoded as `evaluate` decodes a
    converted file's outputs."""
    from compresslab.data import shards  # noqa: PLC0415

    anchors = spec.boxes()
    found = []
    for images in shards.image_batches(split, batch_size):
        raw_boxes, scores = model.predict_on_batch(np.asarray(images, np.float32))
        found += postprocess.detect(np.asarray(raw_boxes), np.asarray(scores), anchors,
                                    score_threshold=score_threshold, iou_threshold=iou_threshold,
                                    max_detections=max_detections)
    return found
