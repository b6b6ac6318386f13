"""From a detector's raw outputs to scored boxes: decode, threshold, class-wise greedy NMS, top-k. NumPy only.

The LiteRT evaluation stage imports this, and that stage must start without TensorFlow, so nothing here (nor
in `boxes`) may import it.

    found = detect(outputs["boxes"], outputs["scores"], spec.boxes())   # one Detections per image
    found = Decoder(spec.boxes(), iou_threshold=0.5).detect_batches(predict, batches)  # a model, batch by batch
    json.dump(to_json(found), f); found = from_json(json.load(f))
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# Relative on purpose: a served detector model (tracking/file_models.py) ships this package's folder as its
# own code, where it is not `compresslab.detection`; boxes.py and this module import nothing else of ours.
from .boxes import decode, iou

DECIMALS = 5  # a 1/100000 image side is far below a pixel of any image this project handles
# The lowest score a box needs to be kept for mAP: COCO ranks every box, so low scores count too.
MIN_SCORE = 0.05


@dataclass
class Detections:
    """The detections of one image, best score first.

    boxes: (k, 4) float32 corners [ymin, xmin, ymax, xmax] as fractions of the image side.
    scores: (k,) float32 class probabilities.
    classes: (k,) int64 class ids.
    """
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int,
        classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: (k, 4) corner boxes.
        scores: (k,) scores.
        iou_threshold: a box overlapping a kept, higher-scored box (of its class) by more than this is dropped.
        limit: stop after keeping this many.
        classes: (k,) class ids: boxes of different classes never suppress each other. None: one class.

    Returns:
        int64 indices into `boxes` of the kept boxes, best score first.
    """
    # Stable sort: equal scores keep their input order, so results repeat exactly.
    order = np.argsort(-np.asarray(scores), kind="stable")
    overlaps = iou(boxes[order], boxes[order]) > iou_threshold
    if classes is not None:
        overlaps &= classes[order][:, None] == classes[order][None, :]
    suppressed = np.zeros(len(order), bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(order[i])
        if len(kept) == limit:
            break
        suppressed |= overlaps[i]  # only later (lower-scored) boxes are still undecided
    return np.asarray(kept, np.int64)


def _detect_one(raw_boxes: np.ndarray, scores: np.ndarray, anchors: np.ndarray, score_threshold: float,
                iou_threshold: float, max_detections: int) -> Detections:
    """`detect` for one image: raw_boxes (A, 4), scores (A, C)."""
    flat = scores.ravel()
    candidates = np.flatnonzero(flat > score_threshold)  # (anchor, class) pairs, anchor-major
    # Greedy NMS decides boxes best-first and a box is only ever suppressed by a better one, so NMS of the
    # best `prefix` candidates decides them exactly as NMS of all would. Start with a few times the boxes
    # wanted and widen only if suppression leaves fewer than `max_detections`: an untrained model scores
    # every one of A * C pairs above the threshold, and an A*C-square IoU matrix would not fit.
    prefix = 4 * max_detections
    while True:
        chosen = candidates
        if len(candidates) > prefix:
            # Everything scoring at least the prefix-th best score (ties included, so the cut is exact).
            bar = np.partition(flat[candidates], len(candidates) - prefix)[len(candidates) - prefix]
            chosen = candidates[flat[candidates] >= bar]
        anchor_ids, classes = np.divmod(chosen, scores.shape[1])
        decoded = decode(raw_boxes[anchor_ids], anchors[anchor_ids])
        kept = nms(decoded, flat[chosen], iou_threshold, max_detections, classes)
        if len(kept) == max_detections or len(chosen) == len(candidates):
            break
        prefix *= 4
    return Detections(decoded[kept].astype(np.float32), flat[chosen][kept].astype(np.float32),
                      classes[kept].astype(np.int64))


def detect(raw_boxes: np.ndarray, scores: np.ndarray, anchors: np.ndarray, score_threshold: float = MIN_SCORE,
           iou_threshold: float = 0.5, max_detections: int = 100) -> list[Detections]:
    """Detections of a batch from a detector's two outputs.

    Args:
        raw_boxes: (N, A, 4) box regressions (the model's `boxes` output, SSD encoding).
        scores: (N, A, C) per-class probabilities (the model's `scores` output).
        anchors: (A, 4) anchors [cy, cx, h, w] (`AnchorSpec.boxes()`).
        score_threshold: an (anchor, class) pair is a candidate when its score is above this.
        iou_threshold: NMS threshold, within one class (boxes of different classes never suppress each other).
        max_detections: at most this many detections per image, the best scores across classes.

    Returns:
        One `Detections` per image, best score first.
    """
    raw_boxes, scores = np.asarray(raw_boxes, np.float32), np.asarray(scores, np.float32)
    anchors = np.asarray(anchors, np.float32)
    if (raw_boxes.ndim != 3 or scores.ndim != 3 or raw_boxes.shape[:2] != scores.shape[:2]
            or raw_boxes.shape[1] != len(anchors)):
        raise ValueError(f"detect expects boxes (N, A, 4), scores (N, A, C) and anchors (A, 4), got "
                         f"{raw_boxes.shape}, {scores.shape} and {anchors.shape}")
    return [_detect_one(b, s, anchors, score_threshold, iou_threshold, max_detections)
            for b, s in zip(raw_boxes, scores)]


@dataclass(frozen=True)
class Decoder:
    """How one detector's raw outputs become boxes: its anchors and its NMS settings (`model.nms`). A Keras
    model and each of its .tflite files are decoded by equal Decoders, so their mAPs compare."""
    anchors: np.ndarray   # (A, 4) [cy, cx, h, w], `AnchorSpec.boxes()`
    iou_threshold: float = 0.5
    max_detections: int = 100
    score_threshold: float = MIN_SCORE

    def detect(self, raw_boxes: np.ndarray, scores: np.ndarray) -> list[Detections]:
        return detect(raw_boxes, scores, self.anchors, score_threshold=self.score_threshold,
                      iou_threshold=self.iou_threshold, max_detections=self.max_detections)

    def detect_batches(self, predict: Callable, batches: Iterable[np.ndarray]) -> list[Detections]:
        """The detections of every image of `batches`, where predict(batch) gives a model's (raw boxes,
        scores): a Keras model's call or a LiteRT interpreter's, so both decode in one loop."""
        found = []
        for batch in batches:
            raw_boxes, scores = predict(batch)
            found += self.detect(np.asarray(raw_boxes), np.asarray(scores))
        return found

    def settings(self) -> dict:
        """What a record stores to build an equal Decoder again beside the anchors: Decoder(anchors, **settings)."""
        return {"iou_threshold": self.iou_threshold, "max_detections": self.max_detections,
                "score_threshold": self.score_threshold}


def to_json(detections: list[Detections]) -> list:
    """JSON-ready detections: per image a list of rows [class, score, ymin, xmin, ymax, xmax], 5 decimals."""
    out = []
    for found in detections:
        rows = np.concatenate([found.scores[:, None].astype(np.float64), found.boxes.astype(np.float64)], axis=1)
        rows = np.round(rows, DECIMALS).tolist()
        out.append([[int(c), *row] for c, row in zip(found.classes, rows)])
    return out


def from_json(data: list) -> list[Detections]:
    """The inverse of `to_json`: one `Detections` per image."""
    out = []
    for rows in data:
        if not rows:
            out.append(Detections.empty())
            continue
        table = np.asarray(rows, np.float64).reshape(-1, 6)
        out.append(Detections(table[:, 2:].astype(np.float32), table[:, 1].astype(np.float32),
                              table[:, 0].astype(np.int64)))
    return out
