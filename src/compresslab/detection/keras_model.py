"""A detector on the Keras side: its anchors from the config, the training targets its splits carry, and the
boxes the Keras model finds (what its converted files are checked against).

The stages that train or convert a detector read the `model` group for its anchors (the anchors are not stored
in the Keras file); `evaluate` reads them from `convert`'s record, so it stays free of TensorFlow.
"""

from collections.abc import Callable

import numpy as np

from compresslab.detection.anchors import AnchorSpec
from compresslab.detection import postprocess
from compresslab.detection.schema import NmsConfig
from compresslab.settings import ModelConfig


def anchors_of(model_cfg: ModelConfig, image_size: int) -> AnchorSpec:
    """The anchors of the detector `model_cfg` names, at `image_size` (the model's defaults where unset)."""
    from compresslab.models import detectors  # noqa: PLC0415  (imports TensorFlow)

    return detectors.anchors_for(model_cfg.model_dump(exclude_none=True), int(image_size))


def decoder_of(model_cfg: ModelConfig, image_size: int, anchors: AnchorSpec | None = None) -> postprocess.Decoder:
    """How the detector `model_cfg` names is decoded: its anchors (`anchors`, when the caller has built them)
    and `model.nms` (NMS defaults where unset)."""
    nms = model_cfg.nms or NmsConfig()
    spec = anchors or anchors_of(model_cfg, image_size)
    return postprocess.Decoder(spec.boxes(), iou_threshold=float(nms.iou),
                               max_detections=int(nms.max_detections))


def training_targets(spec: AnchorSpec, num_classes: int, match_iou: float = 0.5) -> Callable:
    """The tf.data map of one (image, boxes) element to (image, (box targets, score targets)), in the order of
    the model's outputs (Keras matches a tuple of targets to the outputs by position)."""
    from compresslab.detection.targets import make_targets  # noqa: PLC0415  (imports TensorFlow)

    encode = make_targets(spec, num_classes, match_iou=match_iou)

    def targets(image, boxes):
        image, wanted = encode(image, boxes)
        return image, (wanted["boxes"], wanted["scores"])
    return targets


def keras_detections(model, images, decoder: postprocess.Decoder, *, batch_size: int = 64,
                     fresh_model: bool = False) -> list[postprocess.Detections]:
    """The boxes the Keras detector `model` finds on every image of `images` (a split or an array), decoded as
    `evaluate` decodes a converted file's outputs. `fresh_model`: call the model directly instead of
    `predict_on_batch`, which would trace a new graph for every one of many short-lived models."""
    from compresslab.data import shards  # noqa: PLC0415

    def predict(batch):
        batch = np.asarray(batch, np.float32)
        return model(batch, training=False) if fresh_model else model.predict_on_batch(batch)
    return decoder.detect_batches(predict, shards.image_batches(images, batch_size))


def keras_scores(model, split, decoder: postprocess.Decoder, **options) -> dict:
    """The COCO figures (`coco_metrics.score`) of the Keras detector `model` on a stored split."""
    from compresslab.detection import coco_metrics  # noqa: PLC0415

    return coco_metrics.score(split.ground_truth(), keras_detections(model, split, decoder, **options),
                              split.meta["class_names"], split.meta["image_size"])
