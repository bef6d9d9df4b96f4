"""Measurements over seeds, as the studies report them: the mean and its 95% interval, as a table cell, as a
metrics-JSON value, and the Markdown table they go in (`prelar.study`, `prelar.online`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95  # of the intervals over seeds


Bounds = tuple[float, float] | None  # the range a measurement cannot leave (a success rate: 0 to 1)


def interval(values: pd.Series, bounds: Bounds = None) -> tuple[float, float, float]:
    """(mean, low, high) over seeds: with 3+ seeds the 95% Student-t interval of the mean (clipped to
    `bounds`), with 2 their [min, max], with 1 the value itself."""
    mean = float(values.mean())
    if len(values) == 1:
        return mean, mean, mean
    if len(values) == 2:
        return mean, float(values.min()), float(values.max())
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, float(low), float(high)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.3g}"


def cell(values: pd.Series, bounds: Bounds = None) -> str:
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
    return estimate(*interval(values, bounds), len(values))


def estimate(mean: float, low: float, high: float, seeds: int) -> str:
    """"mean [low, high]" (just the mean for one seed)."""
    return _fmt(mean) if seeds == 1 else f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def json_value(values: pd.Series, bounds: Bounds = None) -> dict[str, float | int | None] | None:
    """A measurement over seeds for the metrics JSON, always {seeds, reached, mean, low, high}: `reached` the
    seeds with a finite value (for a first update: those that got there), the rest its `interval` over them;
    null where there is none. None for a measurement the run does not have."""
    values = values.dropna()
    if values.empty:
        return None
    reached = values[np.isfinite(values)]
    mean, low, high = interval(reached, bounds) if len(reached) else (None, None, None)
    return {"seeds": len(values), "reached": len(reached), "mean": mean, "low": low, "high": high}


def paired_differences(
    per_seed: pd.DataFrame, by: str, reference: str, length: str, measured: tuple[str, ...]
) -> pd.DataFrame:
    """Each `by` group (a run, a method) minus `reference`, paired by seed among seeds that ran as long
    (equal `length` column), on the `measured` columns: rows <by>, measurement, seeds, mean, low, high
    (`interval` of the differences)."""
    rows = []
    base = per_seed[per_seed[by] == reference].set_index("seed")
    for name, frame in per_seed[per_seed[by] != reference].groupby(by, sort=False):
        frame = frame.set_index("seed")
        common = frame.index.intersection(base.index)
        common = common[frame.loc[common, length].to_numpy() == base.loc[common, length].to_numpy()]
        for key in measured:
            if key not in frame or key not in base or common.empty:
                continue
            diff = (frame.loc[common, key] - base.loc[common, key]).dropna()
            if not diff.empty:
                mean, low, high = interval(diff)
                rows.append({by: name, "measurement": key, "seeds": len(diff), "mean": float(mean),
                             "low": float(low), "high": float(high)})
    return pd.DataFrame(rows, columns=[by, "measurement", "seeds", "mean", "low", "high"])


def differences_json(compared: pd.DataFrame, by: str) -> dict[str, dict[str, dict[str, float | int]]]:
    """`paired_differences`' rows as {<by>: {measurement: {seeds, mean, low, high}}} (the DVC metrics)."""
    return {
        name: {
            row.measurement: {"seeds": int(row.seeds), "mean": row.mean, "low": row.low, "high": row.high}
            for row in frame.itertuples()
        }
        for name, frame in compared.groupby(by, sort=False)
    }


def markdown(table: pd.DataFrame) -> str:
    return "\n".join([
        "| " + " | ".join(str(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)),
    ])
