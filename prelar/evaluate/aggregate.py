"""Aggregate success rates across runs and tasks with the rliable protocol (Agarwal et al., 2021).

The point estimate is the interquartile mean (IQM: the 25% trimmed mean of all run x task scores pooled
together) and, for reference, the plain mean. Their 95% intervals come from the *stratified* bootstrap:
each replicate resamples, independently for every task, as many runs as that task has, with replacement,
then recomputes the statistic on the pooled resample; the interval is the percentile interval of the
replicates. This is what `rliable.library.get_interval_estimates(..., method="percentile")` computes.

Why not call `rliable` itself: rliable 1.2.0 (the latest release) requires `arch>=5.3.1,<8.0`, and no
such `arch` works with our pins. arch 7.x dies at import with pandas 3 (`deprecate_kwarg()` changed
signature); arch 5.x/6.x wheels are built against numpy 1 (`numpy.dtype size changed`); arch 8.0 imports
but rejects the `random_state` keyword that rliable passes. rliable also draws its bootstrap indices from
numpy's global random state, so its `random_state` argument does not make it reproducible. This module is a
small, seeded re-implementation; `tests/test_evaluate_aggregate.py` checks it against known values, and it
was cross-checked against rliable 1.2.0 (with arch 7.2.0 and pandas 2.3.3 in a separate environment): the
point estimates agree exactly and the interval ends within Monte-Carlo error.

Missing runs are NaN: a task with fewer runs resamples only its own runs (rliable needs a full matrix).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of the scores (NaN-free input)."""
    return stats.trim_mean(scores, proportiontocut=0.25, axis=axis)


def mean(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Arithmetic mean (NaN-free input)."""
    return np.mean(scores, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"iqm": iqm, "mean": mean}


def _task_columns(scores: np.ndarray, name: str) -> list[np.ndarray]:
    """The finite scores of each task (column) of a [runs, tasks] matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name}: scores must be a [runs, tasks] array, got shape {scores.shape}")
    columns = [scores[np.isfinite(scores[:, j]), j] for j in range(scores.shape[1])]
    empty = [j for j, column in enumerate(columns) if column.size == 0]
    if not columns or empty:
        raise ValueError(f"{name}: task column(s) {empty or 'all'} have no runs (all NaN or zero tasks)")
    return columns


def stratified_bootstrap(columns: list[np.ndarray], reps: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates, resampling runs within each task: returns [reps, total runs x tasks]."""
    draws = [column[rng.integers(0, column.size, size=(reps, column.size))] for column in columns]
    return np.concatenate(draws, axis=1)  # [reps, N]


def interval(
    scores: np.ndarray,
    statistic: str = "iqm",
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    name: str = "scores",
) -> tuple[float, float, float]:
    """Point estimate and stratified-bootstrap percentile interval of one statistic: (point, low, high)."""
    columns = _task_columns(scores, name)
    func = STATISTICS[statistic]
    point = float(func(np.concatenate(columns)))
    replicates = func(stratified_bootstrap(columns, reps, np.random.default_rng(seed)), axis=1)  # [reps]
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [alpha, 100.0 - alpha])
    return point, float(low), float(high)


def aggregate(
    scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, dict]:
    """IQM and mean with stratified-bootstrap intervals for each method.

    scores: method -> [runs, tasks] success rates (NaN marks a missing run).
    Returns method -> {"iqm", "iqm_ci": (low, high), "mean", "mean_ci": (low, high), "runs", "tasks"}
    where "runs" counts the finite scores pooled over tasks.
    """
    out = {}
    for method, matrix in scores.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        result: dict = {}
        for statistic in STATISTICS:
            point, low, high = interval(matrix, statistic, reps, seed, confidence, name=method)
            result[statistic] = point
            result[f"{statistic}_ci"] = (low, high)
        result["runs"] = int(np.isfinite(matrix).sum())
        result["tasks"] = int(matrix.shape[1])
        out[method] = result
    return out


def aggregate_curve(
    scores: np.ndarray, statistic: str = "iqm", reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> np.ndarray:
    """Point estimate and interval at every evaluation step of [runs, tasks, steps]: returns [3, steps].

    Rows are (point, low, high); a step at which some task has no run is NaN (it is not comparable).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise ValueError(f"curve scores must be a [runs, tasks, steps] array, got shape {scores.shape}")
    out = np.full((3, scores.shape[2]), np.nan)
    for k in range(scores.shape[2]):
        step = scores[:, :, k]  # [runs, tasks]
        if np.isfinite(step).any(axis=0).all():
            out[:, k] = interval(step, statistic, reps, seed, confidence, name=f"step {k}")
    return out
