"""Uncertainty figures for the compression report: how far an accuracy measured on a finite split can be
trusted, whether two models really differ on the same images, and how a figure spreads over seeds.

The formulas come from statsmodels and scipy rather than being written out here, so the report rests on
well-tested implementations. Only numpy, scipy and statsmodels are imported: the report must not pull in
TensorFlow, pandas or matplotlib just to compute these numbers.
"""

import math

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of `correct` out of `total`.

    Args:
        correct: number of correctly classified samples.
        total: number of samples scored.
        confidence: coverage of the interval, e.g. 0.95.

    Returns:
        (low, high) as fractions in [0, 1].
    """
    # Wilson rather than the normal approximation: it stays inside [0, 1] and keeps its coverage for the
    # small splits and near-perfect accuracies a compression study produces.
    low, high = proportion_confint(correct, total, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def half_width_pp(correct: int, total: int, confidence: float = 0.95) -> float:
    """Half the width of the Wilson interval, in percentage points (the "± x pp" the report prints).

    Args:
        correct: number of correctly classified samples.
        total: number of samples scored.
        confidence: coverage of the interval.

    Returns:
        (high - low) / 2 * 100.
    """
    low, high = accuracy_interval(correct, total, confidence)
    return (high - low) / 2 * 100


def mcnemar_exact(y_true, pred_a, pred_b, alpha: float = 0.05) -> dict:
    """Exact McNemar test of two classifiers scored on the same samples.

    Args:
        y_true: true labels.
        pred_a: predictions of model A, same order as `y_true`.
        pred_b: predictions of model B, same order as `y_true`.
        alpha: significance level.

    Returns:
        {"a_only": A right and B wrong, "b_only": B right and A wrong, "p_value", "significant": p < alpha,
        "n": number of samples}.

    Raises:
        ValueError: if the three sequences are empty or differ in length.
    """
    y_true, pred_a, pred_b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    if not (len(y_true) == len(pred_a) == len(pred_b)):
        raise ValueError(
            f"mcnemar_exact needs equal lengths, got y_true={len(y_true)}, pred_a={len(pred_a)}, "
            f"pred_b={len(pred_b)}"
        )
    if len(y_true) == 0:
        raise ValueError("mcnemar_exact needs at least one sample, got none")
    right_a, right_b = pred_a == y_true, pred_b == y_true
    a_only = int(np.sum(right_a & ~right_b))
    b_only = int(np.sum(~right_a & right_b))
    if a_only + b_only == 0:
        # No discordant pairs: the models cannot be told apart, and the binomial test on zero trials is
        # undefined, so report the p-value that means "no evidence" directly.
        p_value = 1.0
    else:
        # Only the discordant cells matter to McNemar; the exact (binomial) form is used because the
        # discordant counts on small splits are far too low for the chi-square approximation.
        both = int(np.sum(right_a & right_b))
        neither = int(np.sum(~right_a & ~right_b))
        p_value = float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p_value, "significant": p_value < alpha,
            "n": int(len(y_true))}


def agreement(pred_a, pred_b) -> float:
    """Share of samples on which two models predict the same class.

    Args:
        pred_a: predictions of model A.
        pred_b: predictions of model B, same order and length.

    Returns:
        Fraction in [0, 1].
    """
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if len(pred_a) != len(pred_b) or len(pred_a) == 0:
        raise ValueError(f"agreement needs two non-empty sequences of equal length, got {len(pred_a)} "
                         f"and {len(pred_b)}")
    return float(np.mean(pred_a == pred_b))


def seed_summary(values, confidence: float = 0.95) -> dict:
    """Mean, spread and Student-t interval of one figure measured over several seeds.

    Args:
        values: the figure per seed; None and NaN entries (failed runs) are ignored.
        confidence: coverage of the interval.

    Returns:
        {"n", "mean", "std" (sample, ddof=1), "ci_low", "ci_high"}; with a single value the interval
        collapses to (mean, mean), std is 0.0 and "single_seed": True is added.

    Raises:
        ValueError: if no usable value is left.
    """
    kept = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(kept)
    if n == 0:
        raise ValueError("seed_summary needs at least one value that is not None or NaN")
    mean = float(np.mean(kept))
    if n == 1:
        # One seed says nothing about seed-to-seed spread; flag it instead of inventing an interval.
        return {"n": 1, "mean": mean, "std": 0.0, "ci_low": mean, "ci_high": mean, "single_seed": True}
    std = float(np.std(kept, ddof=1))
    if std == 0.0:
        # Identical results on every seed: scipy returns NaN for a zero-scale interval, the honest answer
        # is the point itself.
        return {"n": n, "mean": mean, "std": 0.0, "ci_low": mean, "ci_high": mean}
    # Student-t, not normal: with the handful of seeds a study affords, the variance itself is uncertain.
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": float(low), "ci_high": float(high)}
