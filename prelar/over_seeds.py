"""Measurements over seeds, as the studies report them: the mean and its 95% interval, as a table cell, as a
metrics-JSON value, and the Markdown table they go in (`prelar.study`, `prelar.online`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95  # of the intervals over seeds


def interval(values: pd.Series) -> tuple[float, float, float]:
    """(mean, low, high) over seeds: with 3+ seeds the 95% Student-t interval of the mean, with 2 their
    [min, max], with 1 the value itself."""
    mean = float(values.mean())
    if len(values) == 1:
        return mean, mean, mean
    if len(values) == 2:
        return mean, float(values.min()), float(values.max())
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.3g}"


def cell(values: pd.Series) -> str:
    """Over seeds: the mean [its `interval`]; for a first update, "never" when no seed got there and "k/n
    seeds: mean" when only k did; "—" for a measurement the run does not have (APV's probe)."""
    values = values.dropna()
    if values.empty:
        return "—"
    reached = values[~np.isinf(values)]
    if reached.empty:
        return "never"
    if len(reached) < len(values):
        return f"{len(reached)}/{len(values)} seeds: {_fmt(reached.mean())}"
    return estimate(*interval(values), len(values))


def estimate(mean: float, low: float, high: float, seeds: int) -> str:
    """"mean [low, high]" (just the mean for one seed)."""
    return _fmt(mean) if seeds == 1 else f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def json_value(values: pd.Series) -> dict[str, float | int | None] | None:
    """A measurement over seeds for the metrics JSON, always {seeds, reached, mean, low, high}: `reached` the
    seeds with a finite value (for a first update: those that got there), the rest its `interval` over them;
    null where there is none. None for a measurement the run does not have."""
    values = values.dropna()
    if values.empty:
        return None
    reached = values[np.isfinite(values)]
    mean, low, high = interval(reached) if len(reached) else (None, None, None)
    return {"seeds": len(values), "reached": len(reached), "mean": mean, "low": low, "high": high}


def markdown(table: pd.DataFrame) -> str:
    return "\n".join([
        "| " + " | ".join(str(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)),
    ])
