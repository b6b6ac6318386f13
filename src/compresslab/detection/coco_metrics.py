"""Scoring detections with the COCO protocol (faster-coco-eval), and bootstrap intervals for mAP. No TensorFlow.

mAP has no McNemar test, so its uncertainty comes from resampling TEST IMAGES: the interval of one file's
mAP@[.5:.95], and a paired interval of the difference between two files scored on the same resampled images.

    metrics = score(truth, found, class_names, image_size)           # map, map50, per-class AP, PR curves, ...
    low, high = bootstrap_interval(truth, found, class_names, image_size)
    paired_bootstrap(truth, found_int8, found_float, class_names, image_size)   # delta, low, high, significant

Running COCOeval once per resample would cost ~1000 evaluations per file. Instead COCO's per-image matching
runs once here (`Matches`: the same greedy, score-ordered matching as COCO's evaluateImg, at every IoU
threshold), and a resample only re-weights images: an image drawn w times counts w times in every cumulative
TP/FP sum and ground-truth count, exactly what w distinct copies of it give COCO's accumulate. Tests check
`Matches.map` against faster-coco-eval to 1e-6.
"""

import warnings

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from scipy import stats

from compresslab.errors import UserError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's, built as COCO builds them (np.arange drifts)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100  # COCO's per image and class


def _pixels(corners: np.ndarray, image_size: int) -> np.ndarray:
    """(n, 4) [ymin, xmin, ymax, xmax] fractions -> (n, 4) float64 COCO [x, y, w, h] pixels of the canvas.

    An inverted box becomes an empty one: COCO would give it a negative area and then IGNORE it when unmatched
    instead of counting a false positive."""
    c = np.asarray(corners, np.float64).reshape(-1, 4) * image_size
    return np.stack([c[:, 1], c[:, 0], np.maximum(c[:, 3] - c[:, 1], 0), np.maximum(c[:, 2] - c[:, 0], 0)], axis=1)


def _bbox_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(n, m) IoU of [x, y, w, h] boxes, with COCO's formula (maskApi bbIou) so thresholds cut alike."""
    d, g = d[:, None, :], g[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check(ground_truth: list, detections: list, class_names: list) -> None:
    if len(ground_truth) != len(detections):
        raise UserError(f"{len(detections)} detection lists for {len(ground_truth)} test images: evaluate every "
                        f"test image once (check the evaluation's batch loop)")
    if not sum(len(np.asarray(g).reshape(-1, 5)) for g in ground_truth):
        raise UserError("the test split has no objects, so mAP is undefined: give data.annotations with boxes for "
                        "the test images")
    if not class_names:
        raise UserError("no class names: give the detection data set's classes in data.annotations")


class Matches:
    """COCO's per-image matching of one file's detections, done once, then scored on re-weighted images.

    Args:
        ground_truth: per image a float32 (n, 5) array of rows (class_id, ymin, xmin, ymax, xmax); rows with a
            negative class are padding.
        detections: per image the `Detections`.
        num_classes: K.
        image_size: side of the square canvas in pixels (COCO's IoU is computed on its pixel boxes).
    """

    def __init__(self, ground_truth: list, detections: list, num_classes: int, image_size: int):
        self.images, self.num_classes = len(ground_truth), num_classes
        self.gt_counts = np.zeros((self.images, num_classes))               # (images, K)
        per_class: list[list] = [[] for _ in range(num_classes)]            # (scores, image, tp (T, d)) pieces
        for i, (truth, found) in enumerate(zip(ground_truth, detections)):
            truth = np.asarray(truth, np.float32).reshape(-1, 5)
            truth = truth[truth[:, 0] >= 0]
            gt_classes = truth[:, 0].astype(np.int64)
            self.gt_counts[i] = np.bincount(gt_classes, minlength=num_classes)[:num_classes]
            gt_boxes, dt_boxes = _pixels(truth[:, 1:], image_size), _pixels(found.boxes, image_size)
            scores = np.asarray(found.scores, np.float64)
            for k in np.unique(found.classes):
                mine = np.flatnonzero(found.classes == k)
                # evaluateImg: best score first (stable), at most MAX_DETECTIONS per image and class.
                mine = mine[np.argsort(-scores[mine], kind="mergesort")[:MAX_DETECTIONS]]
                tp = self._greedy(_bbox_iou(dt_boxes[mine], gt_boxes[gt_classes == k]))
                per_class[k].append((scores[mine], np.full(len(mine), i), tp))
        self.classes = []  # per class: (scores (d,), image (d,), tp (T, d)) in accumulate's order
        for k in range(num_classes):
            pieces = per_class[k]
            scores = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0)
            image = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
            tp = np.concatenate([p[2] for p in pieces], axis=1) if pieces else np.zeros((10, 0), bool)
            # accumulate: one stable sort of the image-ordered concatenation, so ties go to the earlier image.
            order = np.argsort(-scores, kind="mergesort")
            self.classes.append((scores[order], image[order], tp[:, order]))
        self._tables()

    @staticmethod
    def _greedy(ious: np.ndarray) -> np.ndarray:
        """COCO's greedy matching at all IoU thresholds at once: each detection (best score first) takes the
        unmatched ground truth it overlaps most, if by at least the threshold (the last of equals, as COCO)."""
        n, m = ious.shape
        bars = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
        tp = np.zeros((len(IOU_THRESHOLDS), n), bool)
        used = np.zeros((len(IOU_THRESHOLDS), m), bool)
        # A detection below the lowest threshold with every ground truth is a false positive at all of them.
        for d in np.flatnonzero(ious.max(axis=1, initial=0.0) >= bars[0, 0]):
            valid = ~used & (ious[d][None, :] >= bars)
            masked = np.where(valid, ious[d][None, :], -1.0)
            best = m - 1 - np.argmax(masked[:, ::-1], axis=1)
            hit = valid.any(axis=1)
            tp[hit, d] = True
            used[hit, best[hit]] = True
        return tp

    def _tables(self) -> None:
        """Per (class, IoU threshold) group, one row per true positive: how many TPs (up to and including it)
        and FPs (before it) each image contributes. Precision at TPs is all COCO's interpolated AP reads: the
        best precision at recall >= r is reached at a TP, since FPs only lower precision."""
        tp_rows, fp_rows, self.row_class, starts, self.group_of = [], [], [], [], []
        for k, (_, image, tp) in enumerate(self.classes):
            for t in range(len(IOU_THRESHOLDS)):
                hits = tp[t]
                count = int(hits.sum())
                if not count:
                    continue
                before = np.cumsum(hits) - hits          # TPs ranked before each detection
                fp = np.zeros((count + 1, self.images))  # FPs per image between consecutive TPs
                np.add.at(fp, (before[~hits], image[~hits]), 1.0)
                tps = np.zeros((count, self.images))
                tps[np.arange(count), image[hits]] = 1.0
                starts.append(sum(len(r) for r in tp_rows))
                tp_rows.append(np.cumsum(tps, axis=0))
                fp_rows.append(np.cumsum(fp, axis=0)[:count])
                self.row_class.extend([k] * count)
                self.group_of.append((k, t))
        self.tp_table = np.concatenate(tp_rows) if tp_rows else np.zeros((0, self.images))
        self.fp_table = np.concatenate(fp_rows) if fp_rows else np.zeros((0, self.images))
        self.starts, self.row_class = np.asarray(starts, np.int64), np.asarray(self.row_class, np.int64)

    def average_precision(self, weights: np.ndarray) -> np.ndarray:
        """COCO's AP per resample, class and IoU threshold for images counted `weights` times.

        Args:
            weights: (B, images) how many times each image is in each resample (all ones: the test set).

        Returns:
            (B, K, T) float64 AP (101-point interpolated precision), NaN where a class has no ground truth.
        """
        weights = np.asarray(weights, np.float64).reshape(-1, self.images)
        objects = weights @ self.gt_counts                                     # (B, K)
        ap = np.zeros((len(weights), self.num_classes, len(IOU_THRESHOLDS)))
        if len(self.row_class):
            tp = weights @ self.tp_table.T                                     # (B, rows) cumulative TPs
            fp = weights @ self.fp_table.T
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = tp / objects[:, self.row_class]
            precision = tp / (tp + fp + np.spacing(1))                          # COCO's eps
            ends = np.r_[self.starts[1:], len(self.row_class)]
            # Recall thresholds each TP row answers: those in (previous row's recall, this row's recall].
            reached = np.searchsorted(RECALL_THRESHOLDS, np.nan_to_num(recall), side="right").astype(np.float64)
            answered = np.diff(reached, axis=1, prepend=0.0)
            for start, end in zip(self.starts, ends):
                answered[:, start] = reached[:, start]
                # Interpolated precision: the best precision at this recall or beyond.
                precision[:, start:end] = np.maximum.accumulate(precision[:, start:end][:, ::-1], axis=1)[:, ::-1]
            sums = np.add.reduceat(precision * answered, self.starts, axis=1) / len(RECALL_THRESHOLDS)
            for column, (k, t) in enumerate(self.group_of):
                ap[:, k, t] = sums[:, column]
        ap[objects == 0] = np.nan  # COCO's -1: no ground truth of that class in that resample
        return ap

    def map(self, weights: np.ndarray) -> np.ndarray:
        """(B,) mAP@[.5:.95] over the classes with ground truth (0 where no class has any) for `weights`."""
        ap = self.average_precision(weights).reshape(len(np.atleast_2d(weights)), -1)
        valid = ~np.isnan(ap)  # COCO's mean skips classes without ground truth
        return np.where(valid, ap, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)

    def counts_at(self, score_threshold: float) -> tuple[int, int, int]:
        """(TP, FP, FN) over all classes at IoU 0.5 for detections scoring >= `score_threshold`. Greedy matching
        goes best score first, so the detections above a threshold match as they do in the full list."""
        tp = fp = 0
        for scores, _, hits in self.classes:
            above = scores >= score_threshold
            tp += int(hits[0][above].sum())
            fp += int((~hits[0][above]).sum())
        return tp, fp, int(self.gt_counts.sum()) - tp


def _coco(ground_truth: list, detections: list, class_names: list, image_size: int) -> COCOeval_faster:
    """faster-coco-eval's evaluation, accumulated: images 1..N, categories 1..K, boxes in canvas pixels."""
    images = [{"id": i + 1, "width": image_size, "height": image_size} for i in range(len(ground_truth))]
    annotations, results = [], []
    for i, (truth, found) in enumerate(zip(ground_truth, detections)):
        truth = np.asarray(truth, np.float32).reshape(-1, 5)
        truth = truth[truth[:, 0] >= 0]
        for k, box in zip(truth[:, 0].astype(int), _pixels(truth[:, 1:], image_size)):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(k) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for k, s, box in zip(found.classes, found.scores, _pixels(found.boxes, image_size)):
            results.append({"image_id": i + 1, "category_id": int(k) + 1, "bbox": box.tolist(), "score": float(s)})
    truth_api = COCO({"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]})
    evaluation = COCOeval_faster(truth_api, truth_api.loadRes(results), "bbox", print_function=lambda *a: None)
    evaluation.params.catIds = list(range(1, len(class_names) + 1))  # classes absent from the truth included
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def _ap(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def score(ground_truth: list, detections: list, class_names: list, image_size: int,
          score_threshold: float = 0.5) -> dict:
    """COCO metrics of one file's detections on the test images.

    Args:
        ground_truth: per image a float32 (n, 5) array (class_id, ymin, xmin, ymax, xmax), fractions.
        detections: per image the `Detections` (same order).
        class_names: the K class names, by class id.
        image_size: the square canvas side in pixels.
        score_threshold: operating point of `precision` / `recall`.

    Returns:
        {"map", "map50", "map75", "ar100": floats; "per_class_ap", "per_class_ap50": {name: float or None (no
        ground truth of that class)}; "precision", "recall": at `score_threshold` and IoU 0.5 over all classes,
        TP / FP / FN from COCO's greedy matching (0.0 when nothing to divide); "pr_curves": {name: {"recall":
        101 floats, "precision": 101 floats} or None}, COCO's interpolated precision at IoU 0.5; "images",
        "objects": ints}.
    """
    _check(ground_truth, detections, class_names)
    evaluation = _coco(ground_truth, detections, class_names, image_size)
    summary = evaluation.stats_as_dict
    precision = evaluation.eval["precision"][:, :, :, 0, -1]                # (T, R, K), area "all", 100 dets
    per_class, per_class50, curves = {}, {}, {}
    for k, name in enumerate(class_names):
        per_class[name], per_class50[name] = _ap(precision[:, :, k]), _ap(precision[0, :, k])
        curves[name] = None if per_class[name] is None else {
            "recall": RECALL_THRESHOLDS.round(2).tolist(), "precision": precision[0, :, k].round(6).tolist()}
    tp, fp, fn = Matches(ground_truth, detections, len(class_names), image_size).counts_at(score_threshold)
    return {"map": max(summary["AP_all"], 0.0), "map50": max(summary["AP_50"], 0.0),
            "map75": max(summary["AP_75"], 0.0), "ar100": max(summary["AR_third"], 0.0),
            "per_class_ap": per_class, "per_class_ap50": per_class50,
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "pr_curves": curves, "images": len(ground_truth), "objects": len(evaluation.cocoGt.anns)}


def _interval(statistic, images: int, samples: int, seed: int, confidence: float) -> tuple[float, float]:
    """scipy.stats.bootstrap over image indices, BCa (bias-corrected and accelerated: mAP is bounded and its
    bootstrap distribution skewed near 0 and 1, where a plain percentile interval is off-centre). When every
    resample gives the same value (a file against itself, perfect detections) BCa is undefined and that value
    is the interval."""
    with warnings.catch_warnings():
        # A degenerate distribution is handled below; scipy's warnings about it would only alarm the reader.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap((np.arange(images),), statistic, vectorized=True, n_resamples=samples,
                                 confidence_level=confidence, method="BCa", batch=250,
                                 rng=np.random.default_rng(seed))
    values = result.bootstrap_distribution
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerate: fall back to the percentile interval
        low, high = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def _weights(indices: np.ndarray, images: int) -> np.ndarray:
    """(B, images) draw counts from (B, n) resampled image indices (a duplicate is a distinct image)."""
    indices = np.asarray(indices).reshape(-1, np.shape(indices)[-1])
    rows = np.repeat(np.arange(len(indices)), indices.shape[1])
    return np.bincount(rows * images + indices.ravel(), minlength=len(indices) * images).reshape(-1, images)


def bootstrap_interval(ground_truth: list, detections: list, class_names: list, image_size: int,
                       samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap confidence interval of mAP@[.5:.95], resampling test images with replacement.

    Args:
        ground_truth, detections, class_names, image_size: as `score`.
        samples: bootstrap resamples.
        seed: seed of numpy's Generator, so an interval repeats exactly.
        confidence: coverage of the interval.

    Returns:
        (low, high) floats.
    """
    _check(ground_truth, detections, class_names)
    matches = Matches(ground_truth, detections, len(class_names), image_size)
    images = len(ground_truth)

    def statistic(indices, axis=-1):
        values = matches.map(_weights(indices, images))
        return values.reshape(np.shape(indices)[:-1])

    return _interval(statistic, images, samples, seed, confidence)


def paired_bootstrap(ground_truth: list, detections_a: list, detections_b: list, class_names: list,
                     image_size: int, samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Paired bootstrap of mAP(a) - mAP(b) on the same test images: each resample scores both files on the
    same drawn images, so the image-to-image variation they share cancels.

    Args:
        ground_truth, class_names, image_size: as `score`.
        detections_a, detections_b: the two files' detections, per image in the same order.
        samples, seed, confidence: as `bootstrap_interval`.

    Returns:
        {"delta": mAP(a) - mAP(b) on the test set, "low", "high": the interval, "significant": the interval
        excludes 0}.
    """
    _check(ground_truth, detections_a, class_names)
    _check(ground_truth, detections_b, class_names)
    a = Matches(ground_truth, detections_a, len(class_names), image_size)
    b = Matches(ground_truth, detections_b, len(class_names), image_size)
    images = len(ground_truth)

    def statistic(indices, axis=-1):
        weights = _weights(indices, images)
        return (a.map(weights) - b.map(weights)).reshape(np.shape(indices)[:-1])

    low, high = _interval(statistic, images, samples, seed, confidence)
    ones = np.ones((1, images))
    return {"delta": float(a.map(ones)[0] - b.map(ones)[0]), "low": low, "high": high,
            "significant": bool(low > 0 or high < 0)}
