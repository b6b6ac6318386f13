"""Report statistics against values published or worked out by hand, never values the module produced.

Wilson intervals: Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med.
17:857-872, worked examples (81/263, 15/148, 0/20, 1/29). Exact McNemar: two-sided binomial test of the
discordant counts with p = 1/2, i.e. p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)).
Student-t quantile t(0.975, df=2) = 4.303 from any t table.
"""

import ast
import math
from pathlib import Path

import pytest

from compresslab.reporting import statistics as st
from compresslab.reporting.statistics import (
    accuracy_interval,
    agreement,
    half_width_pp,
    mcnemar_exact,
    seed_summary,
)


@pytest.mark.parametrize(
    "correct, total, low, high",
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombe(correct, total, low, high):
    got_low, got_high = accuracy_interval(correct, total)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_widens_with_confidence():
    low95, high95 = accuracy_interval(81, 263, 0.95)
    low99, high99 = accuracy_interval(81, 263, 0.99)
    assert low99 < low95 and high99 > high95


def test_half_width_in_percentage_points():
    # (0.3662 - 0.2553) / 2 * 100 = 5.545 pp, from the Newcombe interval above (rounded to 4 places).
    assert half_width_pp(81, 263) == pytest.approx(5.545, abs=0.01)


def _pairs(a_only, b_only, both=0, neither=0):
    """Labels and two prediction lists with the given cells of the 2x2 right/wrong table."""
    y, a, b = [], [], []
    for count, a_right, b_right in ((both, True, True), (a_only, True, False), (b_only, False, True),
                                    (neither, False, False)):
        for _ in range(count):
            y.append(1)
            a.append(1 if a_right else 0)
            b.append(1 if b_right else 0)
    return y, a, b


@pytest.mark.parametrize(
    "a_only, b_only, p",
    [
        (1, 0, 1.0),                  # 2 * 1/2 = 1
        (0, 6, 0.03125),              # 2 * 1/64
        (5, 0, 0.0625),               # 2 * 1/32: five-nil is still not significant at 0.05
        (2, 10, 0.03857421875),       # 2 * (1 + 12 + 66) / 4096
    ],
)
def test_mcnemar_exact_known_p_values(a_only, b_only, p):
    result = mcnemar_exact(*_pairs(a_only, b_only, both=20, neither=3))
    assert result["a_only"] == a_only and result["b_only"] == b_only
    assert result["p_value"] == pytest.approx(p, rel=1e-9)
    assert result["significant"] is (p < 0.05)
    assert result["n"] == a_only + b_only + 23


def test_one_image_difference_on_tiny_split_is_not_significant():
    y = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    pred_a = list(y)
    pred_b = list(y)
    pred_b[3] = 2  # B misses one image A gets right: 100 % vs 90 % accuracy
    result = mcnemar_exact(y, pred_a, pred_b)
    assert (result["a_only"], result["b_only"]) == (1, 0)
    assert result["p_value"] == pytest.approx(1.0)
    assert result["significant"] is False


def test_identical_predictions_give_p_one_and_full_agreement():
    y = [0, 1, 1, 2, 0]
    pred = [0, 1, 2, 2, 1]
    result = mcnemar_exact(y, pred, pred)
    assert result == {"a_only": 0, "b_only": 0, "p_value": 1.0, "significant": False, "n": 5}
    assert agreement(pred, pred) == 1.0


def test_agreement_counts_same_class_not_correctness():
    # Both wrong on sample 2 but with different classes; both wrong on sample 3 with the same class.
    assert agreement([0, 1, 2, 0], [0, 1, 0, 0]) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "y, a, b",
    [([0, 1, 1], [0, 1], [0, 1, 1]), ([0, 1], [0, 1], [0]), ([], [], [])],
)
def test_mcnemar_rejects_mismatched_or_empty_input(y, a, b):
    with pytest.raises(ValueError):
        mcnemar_exact(y, a, b)


def test_agreement_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        agreement([0, 1], [0])


def test_seed_summary_t_interval():
    s = seed_summary([0.9, 0.92, 0.94])
    half = 4.303 * 0.02 / math.sqrt(3)  # t(0.975, df=2) from a table
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.92)
    assert s["std"] == pytest.approx(0.02)
    assert s["ci_low"] == pytest.approx(0.92 - half, abs=1e-4)
    assert s["ci_high"] == pytest.approx(0.92 + half, abs=1e-4)
    assert "single_seed" not in s


def test_seed_summary_ignores_none_and_nan():
    s = seed_summary([0.9, None, 0.92, float("nan"), 0.94])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.92)


def test_seed_summary_single_value_is_flagged():
    s = seed_summary([0.87, None])
    assert s == {"n": 1, "mean": 0.87, "std": 0.0, "ci_low": 0.87, "ci_high": 0.87, "single_seed": True}


def test_seed_summary_identical_values_give_a_point_interval():
    s = seed_summary([0.5, 0.5, 0.5])
    assert (s["std"], s["ci_low"], s["ci_high"]) == (0.0, 0.5, 0.5)


def test_seed_summary_without_values_raises():
    with pytest.raises(ValueError):
        seed_summary([None, float("nan")])


def test_module_imports_only_numpy_scipy_statsmodels():
    # The report must not drag in TensorFlow, pandas or matplotlib for these figures.
    tree = ast.parse(Path(st.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots <= {"math", "numpy", "scipy", "statsmodels"}
