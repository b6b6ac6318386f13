"""Quality of a classifier's predictions, and how a compressed variant compares with its baseline.

Pure NumPy / scikit-learn: nothing here loads a model, so the same functions score Keras and TFLite outputs.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from compresslab.errors import UserError
from compresslab.results.record import as_number

# Keys `ratios` reads from a results row; the comparison command can pass its own names instead.
GZIP_KEY = "gzip_bytes"
LATENCY_KEY = "latency_median_ms_t1"
ACCURACY_KEY = "accuracy"


def quality(y_true, scores_or_pred, class_names: Sequence[str], positive_class: str | None = None) -> dict:
    """Accuracy, macro and positive-class precision/recall/F1, confusion matrix and support.

    Macro averages run over every class in `class_names`, present in `y_true` or not, so that two variants
    scored on the same set always average over the same classes (a class never predicted counts as 0).

    Args:
      y_true: 1-D int labels, indices into `class_names`.
      scores_or_pred: 1-D int predicted labels, or 2-D scores (N, len(class_names)) reduced by argmax.
      class_names: class names in label order.
      positive_class: the class whose precision/recall/F1 are reported as `positive_*`. With exactly two
        classes and None, the second name in sorted order is used (e.g. 'no_fire' of 'fire'/'no_fire':
        name it explicitly when that is not the class of interest). With more classes and None, no
        positive-class metrics are reported.

    Returns:
      dict with accuracy, macro_precision, macro_recall, macro_f1 (floats); positive_class with
      positive_precision, positive_recall, positive_f1 when a positive class applies; confusion (nested
      list, rows = true class, columns = predicted, in class_names order); support ({name: count of
      true samples}); class_names (the order used).
    """
    names = _check_class_names(class_names)
    y_true = _labels(y_true, len(names), "y_true")
    y_pred = _predictions(scores_or_pred, len(names))
    if len(y_true) != len(y_pred):
        raise UserError(f"y_true has {len(y_true)} labels but there are {len(y_pred)} predictions: "
                        f"score the same samples that were labelled")
    labels = list(range(len(names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0)
    result = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }
    positive = _positive_class(names, positive_class)
    if positive is not None:
        result.update(_positive_metrics(y_true, y_pred, names.index(positive)), positive_class=positive)
    result["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    counts = np.bincount(y_true, minlength=len(names))
    result["support"] = {name: int(count) for name, count in zip(names, counts)}
    result["class_names"] = names
    return result


def ratios(row: Mapping, baseline: Mapping, *, gzip_key: str = GZIP_KEY, latency_key: str = LATENCY_KEY,
           accuracy_key: str = ACCURACY_KEY) -> dict:
    """How a variant compares with the baseline: size and latency as ratios, accuracy as a difference.

    Args:
      row: the variant's results (a Mapping).
      baseline: the baseline's results, same keys.
      gzip_key, latency_key, accuracy_key: where the gzipped size, the median latency at one thread and
        the accuracy (a fraction in [0, 1]) are found in both.

    Returns:
      {'gzip_ratio': row / baseline, 'latency_ratio': row / baseline,
       'accuracy_delta_pp': (row - baseline) * 100}; a value is None when either side lacks the key or
      holds None/NaN, or a ratio's baseline is 0.
    """
    accuracy = _pair(row, baseline, accuracy_key)
    return {
        "gzip_ratio": _ratio(_pair(row, baseline, gzip_key)),
        "latency_ratio": _ratio(_pair(row, baseline, latency_key)),
        "accuracy_delta_pp": None if accuracy is None else (accuracy[0] - accuracy[1]) * 100.0,
    }


def pareto_front(points: Sequence[Sequence[float]]) -> list[bool]:
    """Mark the points no other point beats on both cost (minimised) and accuracy (maximised).

    A point is dominated when another is at least as good on both and strictly better on one, so equal
    points never dominate each other: both stay on the front.

    Args:
      points: (cost, accuracy) pairs, cost being a size or a latency.

    Returns:
      One bool per point, True when it is on the Pareto front. A point with a None/NaN coordinate is
      never on the front and dominates nothing (a variant whose measurement failed).
    """
    clean = [_valid_point(point) for point in points]
    return [point is not None and not any(other is not None and _dominates(other, point) for other in clean)
            for point in clean]


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) < 2:
        raise UserError(f"class_names {names} must name at least two classes")
    if len(set(names)) != len(names):
        raise UserError(f"class_names {names} repeat a name: each class needs its own name")
    return names


def _labels(values, n_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise UserError(f"{what} must be a non-empty 1-D array of class indices, got shape {array.shape}")
    # Labels that went through a float array (e.g. loaded from CSV) are fine as long as they are whole.
    if not (np.issubdtype(array.dtype, np.integer) or
            (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0))):
        raise UserError(f"{what} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= n_classes:
        raise UserError(f"{what} holds labels outside 0..{n_classes - 1} ({array.min()}..{array.max()}): "
                        f"class_names lists {n_classes} classes")
    return array


def _predictions(scores_or_pred, n_classes: int) -> np.ndarray:
    array = np.asarray(scores_or_pred)
    if array.ndim == 2:
        if array.shape[1] != n_classes:
            raise UserError(f"scores have {array.shape[1]} columns but class_names lists {n_classes} classes")
        return array.argmax(axis=1)
    return _labels(array, n_classes, "predicted labels")


def _positive_class(names: list[str], positive_class: str | None) -> str | None:
    if positive_class is None:
        return sorted(names)[1] if len(names) == 2 else None
    if positive_class not in names:
        raise UserError(f"positive_class {positive_class!r} is not one of the classes {names}")
    return positive_class


def _positive_metrics(y_true: np.ndarray, y_pred: np.ndarray, index: int) -> dict:
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[index], average=None, zero_division=0)
    return {"positive_precision": float(precision[0]), "positive_recall": float(recall[0]),
            "positive_f1": float(f1[0])}


def _pair(row: Mapping, baseline: Mapping, key: str) -> tuple[float, float] | None:
    mine, theirs = as_number(row.get(key)), as_number(baseline.get(key))
    return None if mine is None or theirs is None else (mine, theirs)


def _ratio(pair: tuple[float, float] | None) -> float | None:
    if pair is None or pair[1] == 0:
        return None
    return pair[0] / pair[1]


def _valid_point(point: Sequence[float]) -> tuple[float, float] | None:
    cost, accuracy = (as_number(value) for value in point)
    return None if cost is None or accuracy is None else (cost, accuracy)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])
