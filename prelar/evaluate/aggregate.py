"""Aggregate runs across tasks with rliable (Agarwal et al., 2021): the report's statistics.

rliable computes them: the stratified bootstrap (runs resampled within each task) and its percentile
intervals, the interquartile mean (IQM: the 25% trimmed mean of all run x task scores pooled), the
probability of improvement and the performance profiles. This module is the adapter the report needs:

- Missing runs. Scores are [runs, tasks, steps] arrays, NaN where a run was not (yet) evaluated (a task
  with fewer seeds, a run still going). A complete array goes to rliable as it is (`StratifiedBootstrap`);
  otherwise each task's evaluated runs go as an array of their own, which rliable resamples independently
  (`StratifiedIndependentBootstrap`), so a task is resampled over its own runs only. Steps with the same
  runs evaluated share one bootstrap; a step where a task has no run gets no estimate (NaN).
- Curves. One bootstrap per curve, the statistics taken at every step of each resample (rliable draws
  every step independently: its strata are task x step).
- Seeding. rliable draws from numpy's global random state (`np.random.choice`; its `random_state`
  argument does not reach those draws), so every estimate seeds that state with `seed` and restores it
  after: an estimate depends only on its scores, `reps`, `seed` and `confidence`.

Statistics (`STATISTICS`): `iqm` (rliable's `aggregate_iqm` at every step) and `mean` over all runs x
tasks pooled (rliable's `aggregate_mean` averages the task means: the same when no run is missing), and
`task_mean`, each task's mean over its runs.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from rliable import library, metrics
from scipy import stats

Strata = tuple[np.ndarray, ...]  # a [runs, tasks, steps] array, or one [runs_j, 1, steps] array per task
TAUS = np.linspace(0.0, 1.0, 41)  # performance-profile thresholds on the success rate


def _pooled(strata: Strata) -> np.ndarray:
    """Every run x task of the strata as a row: [N, steps]."""
    return np.concatenate([s.reshape(-1, s.shape[-1]) for s in strata])


STATISTICS: dict[str, Callable[[Strata], np.ndarray]] = {
    "iqm": lambda strata: stats.trim_mean(_pooled(strata), proportiontocut=0.25, axis=0),  # [steps]
    "mean": lambda strata: _pooled(strata).mean(axis=0),  # [steps]
    "task_mean": lambda strata: np.concatenate([s.mean(axis=0) for s in strata]),  # [tasks, steps]
}


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """numpy's global random state (where rliable draws) seeded with `seed`, restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _estimate(
    data: np.ndarray | list[np.ndarray],
    func: Callable[..., np.ndarray],
    reps: int,
    seed: int,
    confidence: float,
) -> np.ndarray:
    """rliable's point estimate and stratified-bootstrap percentile interval of `func(*data)` (a 1-d array
    of n values; `data`: an array, or a list of arrays resampled independently): [3, n] (point, low, high)."""
    with _seeded(seed):
        points, intervals = library.get_interval_estimates(
            {"": data}, func, method="percentile", reps=reps, confidence_interval_size=confidence
        )
    return np.vstack([np.atleast_1d(points[""]), np.reshape(intervals[""], (2, -1))])


def _strata(scores: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """[runs, tasks, steps] as rliable takes it: whole if complete, else each task's complete runs."""
    finite = np.isfinite(scores).all(axis=2)  # [runs, tasks]
    if finite.all():
        return scores
    return [scores[finite[:, j], j : j + 1] for j in range(scores.shape[1])]  # [runs_j, 1, steps]


def interval_estimates(
    scores: np.ndarray,
    statistics: Sequence[str] = ("iqm",),
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Point estimates and stratified-bootstrap intervals of `statistics` at every step of `scores`.

    scores: [runs, tasks, steps], NaN where a run was not evaluated. Returns statistic -> [3, steps]
    ("task_mean": [3, tasks, steps]), rows (point, low, high), NaN at steps where some task has no run.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise ValueError(f"scores must be a [runs, tasks, steps] array, got shape {scores.shape}")
    tasks, steps = scores.shape[1:]
    shapes = {s: (tasks,) if s == "task_mean" else () for s in statistics}  # each per step
    out = {s: np.full((3, *shape, steps), np.nan) for s, shape in shapes.items()}
    evaluated = np.isfinite(scores)
    groups: dict[bytes, list[int]] = {}  # steps with the same runs evaluated
    for k in range(steps):
        groups.setdefault(evaluated[:, :, k].tobytes(), []).append(k)
    for ks in groups.values():
        if not evaluated[:, :, ks[0]].any(axis=0).all():
            continue  # a task without runs: not comparable
        part = scores[:, :, ks]  # [runs, tasks, S]

        def func(*strata: np.ndarray) -> np.ndarray:
            return np.concatenate([STATISTICS[s](strata).ravel() for s in statistics])

        est = _estimate(_strata(part), func, reps, seed, confidence)  # [3, sum over statistics]
        sizes = [int(np.prod(shape, dtype=int)) * len(ks) for shape in shapes.values()]
        for s, values in zip(statistics, np.split(est, np.cumsum(sizes)[:-1], axis=1), strict=True):
            out[s][..., ks] = values.reshape(3, *shapes[s], len(ks))
    return out


def aggregate(
    scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, dict]:
    """IQM and mean with stratified-bootstrap intervals for each method.

    scores: method -> [runs, tasks] final scores (NaN marks a missing run).
    Returns method -> {"iqm", "iqm_ci": (low, high), "mean", "mean_ci": (low, high), "runs", "tasks"}
    where "runs" counts the scores pooled over tasks.
    """
    out = {}
    for method, matrix in scores.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"{method}: scores must be a [runs, tasks] array, got shape {matrix.shape}")
        empty = [j for j in range(matrix.shape[1]) if not np.isfinite(matrix[:, j]).any()]
        if not matrix.shape[1] or empty:
            raise ValueError(
                f"{method}: task column(s) {empty or 'all'} have no runs (all NaN or zero tasks)"
            )
        est = interval_estimates(matrix[:, :, None], ("iqm", "mean"), reps, seed, confidence)
        result: dict = {}
        for statistic, (point, low, high) in est.items():
            result[statistic] = float(point[0])
            result[f"{statistic}_ci"] = (float(low[0]), float(high[0]))
        result["runs"] = int(np.isfinite(matrix).sum())
        result["tasks"] = int(matrix.shape[1])
        out[method] = result
    return out


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """P(X > Y): the probability that a run of X beats a run of Y on a task, averaged over tasks (rliable,
    Mann-Whitney U per task), with its stratified independent-bootstrap interval: (point, low, high).

    x: [runs_x, tasks], y: [runs_y, tasks] final scores of the same tasks, every run complete.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y need [runs, tasks] scores of the same tasks, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("probability of improvement needs every run of every task (no NaN)")

    def func(*data: np.ndarray) -> np.ndarray:
        return np.atleast_1d(metrics.probability_of_improvement(*data))

    point, low, high = _estimate([x, y], func, reps, seed, confidence)[:, 0]
    return float(point), float(low), float(high)


def performance_profile(
    scores: np.ndarray, taus: np.ndarray = TAUS, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> np.ndarray:
    """Fraction of runs x tasks with a score above each tau (rliable's score distribution), with
    stratified-bootstrap intervals: [3, taus] (point, low, high). scores: [runs, tasks], NaN: missing run."""
    scores = np.asarray(scores, dtype=np.float64)

    def func(*strata: np.ndarray) -> np.ndarray:
        pooled = _pooled(strata)
        return library.score_distributions(pooled[np.isfinite(pooled)], taus)

    return _estimate(_strata(scores[:, :, None]), func, reps, seed, confidence)


# ---- long tables (the report's CSV format) -> estimates ----------------------------------------------


def final_scores(curves: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Final score of every run of one method (columns env_step, success, task, seed) as (tasks, [runs,
    tasks]), NaN padding tasks with fewer seeds."""
    final = curves.sort_values("env_step").groupby(["task", "seed"]).last().reset_index()
    tasks = sorted(final["task"].unique())
    per_task = [final.loc[final["task"] == t, "success"].to_numpy() for t in tasks]
    matrix = np.full((max(len(v) for v in per_task), len(tasks)), np.nan)
    for j, values in enumerate(per_task):
        matrix[: len(values), j] = values
    return tasks, matrix


def curve_tensor(curves: pd.DataFrame, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Success of every run of one method at every evaluation step: (steps, [runs, tasks, steps]), NaN
    where a run was not evaluated."""
    steps = np.sort(curves["env_step"].unique())
    seeds = curves.groupby("task")["seed"].nunique()
    tensor = np.full((int(seeds.max()), len(tasks), len(steps)), np.nan)
    for j, task in enumerate(tasks):
        part = curves[curves["task"] == task]
        for i, (_, run) in enumerate(part.groupby("seed")):
            tensor[i, j, np.searchsorted(steps, run["env_step"].to_numpy())] = run["success"].to_numpy()
    return steps, tensor


def band_rows(xs, est: np.ndarray, x: str, statistic: str, **keys) -> list[dict]:
    """Rows {x, **keys, statistic, low, high} of a [3, len(xs)] estimate, skipping xs without one."""
    return [
        {x: xv, **keys, statistic: est[0, k], "low": est[1, k], "high": est[2, k]}
        for k, xv in enumerate(xs)
        if np.isfinite(est[0, k])
    ]


def mean_by(table: pd.DataFrame, x: str, value: str, reps: int, seed: int, confidence: float) -> pd.DataFrame:
    """Mean over seeds of `value` per (x, method) (columns method, seed, x, value), with its interval."""
    rows = []
    for method, part in table.groupby("method", sort=True):
        wide = part.pivot_table(index="seed", columns=x, values=value, aggfunc="last")  # [seeds, xs]
        est = interval_estimates(wide.to_numpy()[:, None, :], ("mean",), reps, seed, confidence)["mean"]
        rows += band_rows(wide.columns.tolist(), est, x, value, method=method)
    return pd.DataFrame(rows, columns=[x, "method", value, "low", "high"])


def summarize(
    curves: pd.DataFrame, reps: int, seed: int, confidence: float, key: Callable[[str], object] = str
) -> dict[str, pd.DataFrame]:
    """The statistics of success curves (columns env_step, success, method, source, task, seed), methods in
    the order of `key`: the aggregate table, IQM curves across tasks, per-task mean curves, performance
    profiles, and the probability of improvement of every pair of methods of the same source evaluated on
    the same tasks with every run complete (X before Y in the order of `key`)."""
    kw = {"reps": reps, "seed": seed, "confidence": confidence}
    summary, agg_rows, task_rows, profile_rows, finals = [], [], [], [], {}
    for method in sorted(curves["method"].unique(), key=key):
        part = curves[curves["method"] == method]
        source = part["source"].iloc[0]
        tasks, matrix = final_scores(part)
        finals[method] = (source, tasks, matrix)
        result = aggregate({method: matrix}, **kw)[method]
        final_steps = part.groupby(["task", "seed"])["env_step"].max()
        summary.append(
            {
                "method": method,
                "source": source,
                "tasks": len(tasks),
                "runs": result["runs"],
                "iqm": result["iqm"],
                "iqm_low": result["iqm_ci"][0],
                "iqm_high": result["iqm_ci"][1],
                "mean": result["mean"],
                "mean_low": result["mean_ci"][0],
                "mean_high": result["mean_ci"][1],
                "final_env_step": _span(final_steps.min(), final_steps.max()),
                "task_list": ", ".join(tasks),
            }
        )
        steps, tensor = curve_tensor(part, tasks)  # [runs, tasks, steps]
        est = interval_estimates(tensor, ("iqm", "task_mean"), **kw)
        agg_rows += band_rows(steps.tolist(), est["iqm"], "env_step", "iqm", method=method, source=source)
        for j, task in enumerate(tasks):
            task_rows += band_rows(
                steps.tolist(), est["task_mean"][:, j], "env_step", "mean", method=method, task=task
            )
        profile_rows += band_rows(
            TAUS.tolist(), performance_profile(matrix, **kw), "tau", "fraction", method=method
        )
    improvement_rows = []
    for x, y in itertools.combinations(finals, 2):
        (source_x, tasks_x, scores_x), (source_y, tasks_y, scores_y) = finals[x], finals[y]
        if (
            (source_x, tasks_x) == (source_y, tasks_y)
            and np.isfinite(scores_x).all()
            and np.isfinite(scores_y).all()
        ):
            point, low, high = probability_of_improvement(scores_x, scores_y, **kw)
            improvement_rows.append({"x": x, "y": y, "probability": point, "low": low, "high": high})
    return {
        "summary": pd.DataFrame(summary, columns=SUMMARY_COLUMNS),
        "aggregate_curve": pd.DataFrame(
            agg_rows, columns=["env_step", "method", "source", "iqm", "low", "high"]
        ),
        "task_curves": pd.DataFrame(task_rows, columns=["env_step", "method", "task", "mean", "low", "high"]),
        "profiles": pd.DataFrame(profile_rows, columns=["tau", "method", "fraction", "low", "high"]),
        "improvement": pd.DataFrame(improvement_rows, columns=["x", "y", "probability", "low", "high"]),
    }


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


SUMMARY_COLUMNS = [
    "method",
    "source",
    "tasks",
    "runs",
    "iqm",
    "iqm_low",
    "iqm_high",
    "mean",
    "mean_low",
    "mean_high",
    "final_env_step",
    "task_list",
]
