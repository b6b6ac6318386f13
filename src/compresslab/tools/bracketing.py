"""The bracketing strategy of `compresslab search`, on grid indices alone (no DVC, no figures).

The knob's range is a grid, indexed from the least (0) to the most compressed setting. The two ends are probed
first; then the bracket between the most compressed passing setting and the least compressed failing one is
cut into `jobs + 1` parts, one probe per cut (plain bisection with one job), until the bracket is one grid
step wide or `max_probes` is spent. Accuracy on a small test set is not monotone in compression, so the rule
is conservative: the choice is the most compressed probed setting that passes *and* is less compressed than
every failing probe; passing probes beyond a failure are reported as non-monotone, never chosen.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class Outcome:
    """Where the search ended: `chosen` is a grid index (None when nothing passed), `bracket` the indices
    between which the answer lies, `non_monotone` passing indices beyond a failure."""
    chosen: int | None
    bracket: tuple[int, int | None]
    non_monotone: list[int]
    exhausted: bool


def bracketing_search(grid_size: int, probe: Callable[[list[int]], dict[int, bool]], *, jobs: int,
                      max_probes: int) -> Outcome:
    """Search indices 0..grid_size-1 (least to most compressed) for the most compressed passing one.

    Args:
      grid_size: how many settings the grid holds (>= 2).
      probe: runs the given indices (at once) and returns whether each passed.
      jobs: probes per round after the first.
      max_probes: the most indices probed in all.

    Returns:
      The Outcome; `exhausted` when max_probes ran out before the bracket was one step wide.
    """
    results: dict[int, bool] = {}
    results.update(probe([0, grid_size - 1][:max_probes]))
    while True:
        outcome = outcome_of(results)
        low, high = outcome.bracket
        if outcome.chosen is None or high is None or high - low <= 1:
            return outcome
        budget = max_probes - len(results)
        if budget <= 0:
            outcome.exhausted = True
            return outcome
        count = min(jobs, budget, high - low - 1)
        # Cut the bracket into count + 1 equal parts: bisection with one job, k-section with k.
        cuts = sorted({low + round((high - low) * i / (count + 1)) for i in range(1, count + 1)} - {low, high})
        results.update(probe(cuts))


def outcome_of(results: Mapping[int, bool]) -> Outcome:
    """The conservative rule applied to the probes so far ({grid index: passed}); never `exhausted`, which only
    the search itself can tell."""
    failures = [index for index, passed in results.items() if not passed]
    first_failure = min(failures) if failures else None
    below = [index for index, passed in results.items()
             if passed and (first_failure is None or index < first_failure)]
    chosen = max(below) if below else None
    non_monotone = sorted(index for index, passed in results.items()
                          if passed and first_failure is not None and index > first_failure)
    return Outcome(chosen, (chosen if chosen is not None else -1, first_failure), non_monotone, False)
