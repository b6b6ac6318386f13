"""Training targets and losses of a one-stage detector, in TensorFlow (they run inside `tf.data` and Keras).

`make_targets` turns one image's ground truth into per-anchor targets in a `tf.data` map; `detection_losses`
gives the two Keras losses that read them, one per model output:

    dataset = dataset.map(make_targets(spec, num_classes))          # before batching
    model.compile(optimizer, loss=detection_losses(num_classes))    # outputs named "boxes" and "scores"

Targets per anchor (A anchors, C classes):
    "boxes":  (A, 5) = SSD deltas of the matched ground truth (see `boxes.encode`) + a positive flag (1 / 0).
    "scores": (A, C + 1) = one-hot class for positives (all zeros for negatives) + a weight (1 for positives and
              negatives, 0 for anchors in the ignore band, which neither reward nor punish a score).
"""

import tensorflow as tf
import tf_keras as keras

from compresslab.detection.anchors import AnchorSpec
from compresslab.errors import UserError

VARIANCES = (0.1, 0.1, 0.2, 0.2)  # SSD's, as in `boxes.VARIANCES`
MIN_SIZE = 1e-6  # as `boxes.MIN_SIZE`: a degenerate box must not give log(0)


def _corners(centres: tf.Tensor) -> tf.Tensor:
    half = centres[:, 2:] / 2
    return tf.concat([centres[:, :2] - half, centres[:, :2] + half], axis=-1)


def _iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """(n, m) IoU of corner boxes a (n, 4) and b (m, 4)."""
    top_left = tf.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = tf.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)
    area_a = tf.reduce_prod(tf.maximum(a[:, 2:] - a[:, :2], 0.0), axis=-1)
    area_b = tf.reduce_prod(tf.maximum(b[:, 2:] - b[:, :2], 0.0), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def _encode(gt_corners: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """SSD deltas (A, 4) of corner boxes (A, 4) against centre-form anchors (A, 4), row by row."""
    size = tf.maximum(gt_corners[:, 2:] - gt_corners[:, :2], MIN_SIZE)
    centre = gt_corners[:, :2] + size / 2
    deltas = tf.concat([(centre - anchors[:, :2]) / anchors[:, 2:], tf.math.log(size / anchors[:, 2:])], axis=-1)
    return deltas / tf.constant(VARIANCES, tf.float32)


def make_targets(spec: AnchorSpec, num_classes: int, match_iou: float = 0.5, ignore_iou: float = 0.4):
    """A `tf.data` map function from one image's ground truth to per-anchor training targets.

    Each anchor takes the ground-truth box it overlaps most. It is positive at IoU >= `match_iou`, negative
    below `ignore_iou`, ignored in between; and every ground-truth box makes its best anchor positive whatever
    the IoU, so a box smaller than every anchor still trains one.

    Args:
        spec: the detector's anchors (their order is the model outputs' order).
        num_classes: C, the number of object classes (no background class).
        match_iou: IoU from which an anchor is positive.
        ignore_iou: IoU below which an anchor is negative; must not exceed `match_iou`.

    Returns:
        A function `(image, boxes) -> (image, {"boxes": (A, 5) float32, "scores": (A, C + 1) float32})` for ONE
        image, `boxes` (n, 5) float32 rows (class_id, ymin, xmin, ymax, xmax) as fractions; n may be 0, and rows
        with a negative class (padding) or no area are left out.
    """
    if not 0.0 < ignore_iou <= match_iou <= 1.0:
        raise UserError(f"detection ignore_iou={ignore_iou} and match_iou={match_iou} must satisfy "
                        f"0 < ignore_iou <= match_iou <= 1: set e.g. match_iou: 0.5, ignore_iou: 0.4")
    anchors = tf.constant(spec.boxes(), tf.float32)
    anchor_corners = _corners(anchors)
    count = spec.count

    def targets(image, boxes):
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 5])
        real = ((boxes[:, 0] >= 0) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2]))
        gt = tf.boolean_mask(boxes, real)
        # A zero-IoU dummy box after the real ones keeps argmax/max defined when an image has no objects (a
        # reduce_max over zero boxes is -inf); no anchor can match it, so it only ever yields negatives.
        gt = tf.concat([gt, tf.constant([[0.0, 0.0, 0.0, 0.0, 0.0]])], axis=0)
        iou = _iou(anchor_corners, gt[:, 1:])                                  # (A, n + 1)
        best_gt = tf.argmax(iou, axis=1, output_type=tf.int32)
        best_iou = tf.reduce_max(iou, axis=1)
        # Each real box's best anchor: positive, and assigned to that box (of two boxes sharing a best anchor,
        # one keeps it; scatter_nd_update does not say which).
        real_count = tf.shape(gt)[0] - 1
        best_anchor = tf.argmax(iou[:, :real_count], axis=0, output_type=tf.int32)
        forced = tf.scatter_nd(best_anchor[:, None], tf.ones([real_count]), [count]) > 0  # sums duplicates
        best_gt = tf.tensor_scatter_nd_update(best_gt, best_anchor[:, None], tf.range(real_count))
        positive = (best_iou >= match_iou) | forced
        negative = (best_iou < ignore_iou) & ~positive
        matched = tf.gather(gt, best_gt)
        flag = tf.cast(positive, tf.float32)[:, None]
        deltas = _encode(matched[:, 1:], anchors) * flag  # zeros where there is nothing to regress
        labels = tf.one_hot(tf.cast(matched[:, 0], tf.int32), num_classes) * flag
        weight = tf.cast(positive | negative, tf.float32)[:, None]
        box_target = tf.ensure_shape(tf.concat([deltas, flag], axis=-1), [count, 5])
        score_target = tf.ensure_shape(tf.concat([labels, weight], axis=-1), [count, num_classes + 1])
        return image, {"boxes": box_target, "scores": score_target}

    return targets


def _normaliser(positives: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """Factor that makes Keras's per-replica mean of per-sample losses equal (sum over the GLOBAL batch) /
    (positive anchors in the global batch, at least 1).

    Keras (compile / fit) reduces a loss's per-sample values with SUM_OVER_BATCH_SIZE: the mean over this
    replica's batch, then divided by the number of replicas, with the gradients summed across replicas. So
    per-sample values of loss * batch * replicas / global_positives sum, over all replicas, to
    global_loss / global_positives. The positives are summed across replicas with an all-reduce when a
    multi-replica strategy is running this step (it is, in fit / evaluate); otherwise they are this batch's.
    """
    positives = tf.stop_gradient(tf.reduce_sum(positives))
    replicas = 1
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        positives = context.all_reduce(tf.distribute.ReduceOp.SUM, positives)
        replicas = context.num_replicas_in_sync
    return tf.cast(batch * replicas, tf.float32) / tf.maximum(positives, 1.0)


@keras.utils.register_keras_serializable(package="compresslab")
class BoxLoss(keras.losses.Loss):
    """Smooth-L1 (Huber, delta 1) on the four box regressions of positive anchors.

    `call` returns one value per image (batch,) so that Keras's default reduction (mean over the batch, scaled
    for the replicas) applies; see `_normaliser` for how that becomes the sum over positives / positives.
    """

    def __init__(self, name: str = "box_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        flag = y_true[..., 4]
        error = tf.abs(y_true[..., :4] - y_pred)
        huber = tf.where(error < 1.0, 0.5 * tf.square(error), error - 0.5)
        per_image = tf.reduce_sum(tf.reduce_sum(huber, axis=-1) * flag, axis=-1)
        return per_image * _normaliser(flag, tf.shape(y_true)[0])


@keras.utils.register_keras_serializable(package="compresslab")
class FocalLoss(keras.losses.Loss):
    """RetinaNet's sigmoid focal loss on the per-class probabilities of every anchor not ignored.

    Thousands of easy background anchors would swamp a plain cross-entropy; (1 - p_t) ** gamma shrinks the
    loss of well-classified anchors and alpha weighs positives against negatives (RetinaNet's 0.25, 2.0).
    Returns one value per image (batch,), normalised as `BoxLoss`.
    """

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.alpha, self.gamma = int(num_classes), float(alpha), float(gamma)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        labels, weight = y_true[..., :self.num_classes], y_true[..., self.num_classes]
        # The model gives probabilities (a sigmoid output), not logits: clip them so log() stays finite.
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
        cross_entropy = -(labels * tf.math.log(p) + (1.0 - labels) * tf.math.log(1.0 - p))
        p_t = labels * p + (1.0 - labels) * (1.0 - p)
        alpha_t = labels * self.alpha + (1.0 - labels) * (1.0 - self.alpha)
        focal = alpha_t * tf.pow(1.0 - p_t, self.gamma) * cross_entropy
        per_image = tf.reduce_sum(tf.reduce_sum(focal, axis=-1) * weight, axis=-1)
        return per_image * _normaliser(labels, tf.shape(y_true)[0])

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "alpha": self.alpha, "gamma": self.gamma}


def detection_losses(num_classes: int, alpha: float = 0.25, gamma: float = 2.0) -> dict:
    """The detector's Keras losses, keyed by output name, for `model.compile(loss=...)`.

    Args:
        num_classes: C, the number of object classes.
        alpha: focal loss weight of positives (negatives get 1 - alpha).
        gamma: focal loss focusing exponent.

    Returns:
        {"boxes": BoxLoss(), "scores": FocalLoss(num_classes, alpha, gamma)}: registered Keras `Loss` objects,
        so a compiled model saves to HDF5 and loads back (with or without `compile`).
    """
    return {"boxes": BoxLoss(), "scores": FocalLoss(num_classes, alpha, gamma)}
