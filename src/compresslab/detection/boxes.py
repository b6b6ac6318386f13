"""Box geometry in NumPy: corner <-> centre form, IoU, and SSD's anchor-relative encoding.

Corners are (ymin, xmin, ymax, xmax) and centres (cy, cx, h, w), both as fractions of the (square) image side.
The encoding is SSD's, with its variances (0.1, 0.1, 0.2, 0.2): dividing by them scales the regression targets
to roughly unit variance, so one smooth-L1 loss weighs centre and size alike. `targets.py` does the same in
TensorFlow and `postprocess.py` decodes with `decode` below; the three must agree.

    deltas = encode(gt_corners, anchors)        # (n, 4) for n boxes, each against its own anchor
    corners = decode(deltas, anchors)           # back again, clipped to the image
"""

import numpy as np

# SSD's variances for (ty, tx, th, tw).
VARIANCES = np.array([0.1, 0.1, 0.2, 0.2], np.float32)
# Sizes below this (a fraction of the image side) are clamped before a log, so a degenerate box cannot give -inf.
MIN_SIZE = 1e-6
# exp() of a wild size regression overflows float32 near 88; capping log(size / anchor) at log(1000) keeps a
# decoded box finite (it is clipped to the image anyway).
MAX_LOG_SIZE = float(np.log(1000.0))


def to_centre(corners: np.ndarray) -> np.ndarray:
    """Corner boxes (..., 4) [ymin, xmin, ymax, xmax] as centre boxes (..., 4) [cy, cx, h, w]."""
    corners = np.asarray(corners, np.float32)
    size = corners[..., 2:] - corners[..., :2]
    return np.concatenate([corners[..., :2] + size / 2, size], axis=-1)


def to_corners(centres: np.ndarray) -> np.ndarray:
    """Centre boxes (..., 4) [cy, cx, h, w] as corner boxes (..., 4) [ymin, xmin, ymax, xmax]."""
    centres = np.asarray(centres, np.float32)
    half = centres[..., 2:] / 2
    return np.concatenate([centres[..., :2] - half, centres[..., :2] + half], axis=-1)


def area(corners: np.ndarray) -> np.ndarray:
    """Areas (...,) of corner boxes (..., 4); an inverted box has area 0."""
    corners = np.asarray(corners)
    return (np.clip(corners[..., 2] - corners[..., 0], 0, None)
            * np.clip(corners[..., 3] - corners[..., 1], 0, None))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` with every box of `b`.

    Args:
        a: (n, 4) corner boxes.
        b: (m, 4) corner boxes.

    Returns:
        (n, m) float32 IoUs in [0, 1]; 0 where both boxes are empty.
    """
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    # Coordinate by coordinate on (n, m) arrays: NMS calls this on hundreds of boxes per image, and this is
    # several times faster than (n, m, 2) corner arrays reduced with np.prod.
    (a0, a1, a2, a3), (b0, b1, b2, b3) = a.T[:, :, None], b.T[:, None, :]
    height = np.minimum(a2, b2) - np.maximum(a0, b0)
    width = np.minimum(a3, b3) - np.maximum(a1, b1)
    inter = np.maximum(height, 0) * np.maximum(width, 0)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)  # 0 where both are empty (inter is 0 then)


def encode(gt_corners: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """SSD regression targets of ground-truth boxes against anchors, row by row.

    Args:
        gt_corners: (n, 4) corner boxes, row i matched to anchor i.
        anchors: (n, 4) anchors [cy, cx, h, w] (`AnchorSpec.boxes()` rows).

    Returns:
        (n, 4) float32 [ty, tx, th, tw] = ((gy - ay) / ah / 0.1, (gx - ax) / aw / 0.1,
        log(gh / ah) / 0.2, log(gw / aw) / 0.2).
    """
    gt = to_centre(gt_corners)
    anchors = np.asarray(anchors, np.float32)
    centre = (gt[..., :2] - anchors[..., :2]) / anchors[..., 2:]
    size = np.log(np.maximum(gt[..., 2:], MIN_SIZE) / anchors[..., 2:])
    return (np.concatenate([centre, size], axis=-1) / VARIANCES).astype(np.float32)


def decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Corner boxes from SSD regressions, the inverse of `encode`, clipped to the image.

    Args:
        deltas: (..., A, 4) regressions [ty, tx, th, tw] (a model's `boxes` output).
        anchors: (A, 4) anchors [cy, cx, h, w].

    Returns:
        (..., A, 4) float32 corner boxes [ymin, xmin, ymax, xmax], each coordinate clipped to [0, 1].
    """
    deltas = np.asarray(deltas, np.float32) * VARIANCES
    anchors = np.asarray(anchors, np.float32)
    centre = anchors[..., :2] + deltas[..., :2] * anchors[..., 2:]
    size = anchors[..., 2:] * np.exp(np.minimum(deltas[..., 2:], MAX_LOG_SIZE))
    return np.clip(to_corners(np.concatenate([centre, size], axis=-1)), 0.0, 1.0)
