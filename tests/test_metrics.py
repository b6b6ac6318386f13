"""Quality metrics, baseline ratios and the Pareto front, on small inputs worked out by hand."""

import warnings

import numpy as np
import pytest

from compresslab.errors import UserError
from compresslab.reporting.metrics import pareto_front, quality, ratios

# Two classes: confusion [[1, 1], [1, 2]].
# Class 1: TP 2, FP 1, FN 1 -> P = R = F1 = 2/3. Class 0: TP 1, FP 1, FN 1 -> P = R = F1 = 1/2.
Y2 = [0, 0, 1, 1, 1]
PRED2 = [0, 1, 1, 1, 0]

# Three classes: confusion [[1, 1, 0], [0, 2, 0], [1, 0, 2]], 5 of 7 right.
# Precision 1/2, 2/3, 1; recall 1/2, 1, 2/3; F1 1/2, 4/5, 4/5.
Y3 = [0, 0, 1, 1, 2, 2, 2]
PRED3 = [0, 1, 1, 1, 2, 0, 2]


def test_binary_metrics_match_hand_computation():
    result = quality(Y2, PRED2, ["neg", "pos"])
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["positive_class"] == "pos"
    assert result["positive_precision"] == pytest.approx(2 / 3)
    assert result["positive_recall"] == pytest.approx(2 / 3)
    assert result["positive_f1"] == pytest.approx(2 / 3)
    assert result["macro_precision"] == pytest.approx(7 / 12)
    assert result["macro_recall"] == pytest.approx(7 / 12)
    assert result["macro_f1"] == pytest.approx(7 / 12)
    assert result["confusion"] == [[1, 1], [1, 2]]
    assert result["support"] == {"neg": 2, "pos": 3}


def test_default_positive_class_is_second_sorted_name_not_second_label():
    # Label 0 is 'b', which sorts second, so the positive metrics are those of label 0.
    result = quality(Y2, PRED2, ["b", "a"])
    assert result["positive_class"] == "b"
    assert result["positive_precision"] == pytest.approx(1 / 2)
    assert result["positive_recall"] == pytest.approx(1 / 2)


def test_explicit_positive_class_is_used():
    result = quality(Y2, PRED2, ["fire", "no_fire"], positive_class="fire")
    assert result["positive_class"] == "fire"
    assert result["positive_recall"] == pytest.approx(1 / 2)


def test_three_classes_match_hand_computation():
    result = quality(Y3, PRED3, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["macro_precision"] == pytest.approx(13 / 18)
    assert result["macro_recall"] == pytest.approx(13 / 18)
    assert result["macro_f1"] == pytest.approx(0.7)
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert result["support"] == {"a": 2, "b": 2, "c": 3}
    assert "positive_class" not in result


def test_three_classes_with_a_named_positive_class():
    result = quality(Y3, PRED3, ["a", "b", "c"], positive_class="c")
    assert result["positive_precision"] == pytest.approx(1.0)
    assert result["positive_recall"] == pytest.approx(2 / 3)
    assert result["positive_f1"] == pytest.approx(0.8)


def test_scores_are_reduced_by_argmax():
    scores = np.full((len(PRED3), 3), 0.1, dtype=np.float32)
    scores[np.arange(len(PRED3)), PRED3] = 0.8
    assert quality(Y3, scores, ["a", "b", "c"]) == quality(Y3, PRED3, ["a", "b", "c"])


def test_class_never_seen_counts_as_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quality([0, 0, 0], [0, 0, 0], ["a", "b"], positive_class="b")
    assert result["accuracy"] == 1.0
    assert result["macro_precision"] == pytest.approx(0.5)
    assert result["positive_recall"] == 0.0
    assert result["confusion"] == [[3, 0], [0, 0]]


def test_unknown_positive_class_names_the_classes():
    with pytest.raises(UserError, match=r"'cat'.*\['neg', 'pos'\]"):
        quality(Y2, PRED2, ["neg", "pos"], positive_class="cat")


@pytest.mark.parametrize("y_true, pred, match", [
    ([0, 1], [0, 1, 1], "2 labels but there are 3"),
    ([0, 2], [0, 1], r"outside 0\.\.1"),
    ([0, 1], np.zeros((2, 3)), "3 columns"),
    ([0.5, 1], [0, 1], "integer class indices"),
    ([], [], "non-empty"),
])
def test_bad_inputs_are_user_errors(y_true, pred, match):
    with pytest.raises(UserError, match=match):
        quality(y_true, pred, ["neg", "pos"])


def test_ratios_against_baseline():
    row = {"gzip_bytes": 250, "latency_median_ms_t1": 0.5, "accuracy": 0.91}
    baseline = {"gzip_bytes": 1000, "latency_median_ms_t1": 2.0, "accuracy": 0.93}
    result = ratios(row, baseline)
    assert result["gzip_ratio"] == pytest.approx(0.25)
    assert result["latency_ratio"] == pytest.approx(0.25)
    assert result["accuracy_delta_pp"] == pytest.approx(-2.0)


def test_ratios_missing_or_zero_give_none():
    result = ratios({"gzip_bytes": 250, "accuracy": None}, {"gzip_bytes": 0, "latency_median_ms_t1": 2.0,
                                                            "accuracy": 0.9})
    assert result == {"gzip_ratio": None, "latency_ratio": None, "accuracy_delta_pp": None}


def test_ratios_with_custom_keys():
    result = ratios({"size": 3, "ms": 1.0, "acc": 0.5}, {"size": 6, "ms": 4.0, "acc": 0.25},
                    gzip_key="size", latency_key="ms", accuracy_key="acc")
    assert result == pytest.approx({"gzip_ratio": 0.5, "latency_ratio": 0.25, "accuracy_delta_pp": 25.0})


def test_pareto_front_of_five_points():
    points = [(1, 0.80),   # cheapest: on the front
              (2, 0.90),   # on the front
              (2, 0.85),   # same cost as the one above, less accurate
              (3, 0.90),   # same accuracy as (2, 0.90), dearer
              (4, 0.95)]   # most accurate: on the front
    assert pareto_front(points) == [True, True, False, False, True]


def test_pareto_equal_points_are_both_on_the_front():
    assert pareto_front([(1, 0.8), (1, 0.8), (2, 0.7)]) == [True, True, False]


def test_pareto_point_with_missing_value_is_off_the_front_and_dominates_nothing():
    assert pareto_front([(1, None), (2, 0.5), (float("nan"), 0.9)]) == [False, True, False]


def test_pareto_of_nothing_is_empty():
    assert pareto_front([]) == []
