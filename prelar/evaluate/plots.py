"""Figures of the report (matplotlib, headless) and the DVC plot templates for the same data.

Every function takes plain tables (pandas DataFrames in the long format the report writes as CSV) and
returns a `Figure`; the report saves it as PNG and embeds it. Intervals are drawn as shaded bands. The
aggregate statistics use rliable's own plots (`rliable.plot_utils`, imported in those functions only: the
evaluation stages draw without it), coloured like the rest.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Vega-Lite templates for `dvc plots show`: DVC's built-in templates colour series by revision/file, not
# by a column, so these colour by the `method` column. BAND: x, method, value, low, high (one line and its
# interval per method). RUNS: one thin line per (task, seed), coloured by method, one panel per task.
DVC_TEMPLATE_BAND = """{
  "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
  "data": {"values": "<DVC_METRIC_DATA>"},
  "title": "<DVC_METRIC_TITLE>", "width": 420, "height": 300,
  "encoding": {"x": {"field": "<DVC_METRIC_X>", "type": "quantitative", "title": "<DVC_METRIC_X_LABEL>"},
               "color": {"field": "method", "type": "nominal"}},
  "layer": [
    {"mark": {"type": "errorband", "opacity": 0.2},
     "encoding": {"y": {"field": "low", "type": "quantitative", "title": "<DVC_METRIC_Y_LABEL>"},
                  "y2": {"field": "high"}}},
    {"mark": {"type": "line", "point": true, "tooltip": {"content": "data"}},
     "encoding": {"y": {"field": "<DVC_METRIC_Y>", "type": "quantitative", "title": "<DVC_METRIC_Y_LABEL>"}}}
  ]
}
"""
DVC_TEMPLATE_RUNS = """{
  "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
  "data": {"values": "<DVC_METRIC_DATA>"},
  "title": "<DVC_METRIC_TITLE>",
  "mark": {"type": "line", "point": true, "tooltip": {"content": "data"}},
  "encoding": {
    "x": {"field": "<DVC_METRIC_X>", "type": "quantitative", "title": "<DVC_METRIC_X_LABEL>"},
    "y": {"field": "<DVC_METRIC_Y>", "type": "quantitative", "title": "<DVC_METRIC_Y_LABEL>"},
    "color": {"field": "method", "type": "nominal"},
    "detail": {"field": "seed", "type": "nominal"},
    "column": {"field": "task", "type": "nominal"}
  },
  "width": 260, "height": 220
}
"""


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _colors(methods: list[str]) -> dict[str, tuple]:
    """A stable colour per method; "X (published)" shares X's colour."""
    base = sorted({m.removesuffix(" (published)") for m in methods})
    cmap = plt.get_cmap("tab10")
    return {m: cmap(base.index(m.removesuffix(" (published)")) % 10) for m in methods}


def _band(ax, frame: pd.DataFrame, x: str, y: str, color, label: str, dashed: bool = False) -> None:
    frame = frame.sort_values(x)
    ax.plot(frame[x], frame[y], "--" if dashed else "-", marker="o", ms=3, color=color, label=label)
    ax.fill_between(frame[x], frame["low"], frame["high"], color=color, alpha=0.2, lw=0)


def band_panels(
    table: pd.DataFrame,
    x: str,
    y: str,
    panel: str | None,
    xlabel: str,
    ylabel: str,
    title: str,
    sharey: bool = True,
    yardsticks: dict[str, float] | None = None,
) -> Figure:
    """Lines with interval bands per method (columns x, method, y, low, high), one panel per `panel` value,
    with a panel's yardstick (`yardsticks[panel value]`) as a grey dashed line.

    Methods labelled "(published)" are dashed.
    """
    panels = sorted(table[panel].unique()) if panel else [None]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=sharey)
    colors = _colors(sorted(table["method"].unique()))
    for ax, name in zip(axes.flat, panels, strict=False):
        part = table if name is None else table[table[panel] == name]
        for method, frame in part.groupby("method", sort=True):
            _band(ax, frame, x, y, colors[method], method, dashed=method.endswith("(published)"))
        if yardsticks and name in yardsticks:
            ax.axhline(yardsticks[name], color="grey", lw=0.9, ls="--")
        ax.set_title(name if name is not None else title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if panel:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def interval_estimates(summary: pd.DataFrame, ci: str) -> Figure:
    """rliable's interval-estimate plot: IQM and mean with their intervals, one row per method (columns
    method, iqm, iqm_low, iqm_high, mean, mean_low, mean_high)."""
    from rliable import plot_utils

    methods = list(summary["method"])
    points = {row.method: np.array([row.iqm, row.mean]) for row in summary.itertuples()}
    intervals = {
        row.method: np.array([[row.iqm_low, row.mean_low], [row.iqm_high, row.mean_high]])
        for row in summary.itertuples()
    }
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        ["IQM", "Mean"],
        algorithms=methods[::-1],  # rliable draws the first at the bottom
        colors=_colors(methods),
        subfigure_width=4.5,
        wspace=0.3,
        row_height=0.6,
        xlabel=f"success rate ({ci} CI)",
        xlabel_y_coordinate=-0.6 / len(methods),
    )
    return fig


def probability_of_improvement(table: pd.DataFrame, ci: str) -> Figure:
    """rliable's probability-of-improvement plot: P(X > Y) with its interval, one row per pair (columns x,
    y, probability, low, high)."""
    from rliable import plot_utils

    pairs = {f"{row.x}\t{row.y}": row.probability for row in table.itertuples()}
    intervals = {f"{row.x}\t{row.y}": np.array([row.low, row.high]) for row in table.itertuples()}
    colors = _colors(list(table["x"]) + list(table["y"]))
    fig, ax = plt.subplots(figsize=(5, 0.5 * len(table) + 1.2))
    plot_utils.plot_probability_of_improvement(
        pairs,
        intervals,
        pair_separator="\t",
        ax=ax,
        colors=[colors[x] for x in table["x"]],
        xlabel=f"P(X > Y) ({ci} CI)",
        ticklabelsize="medium",
        labelsize="medium",
    )
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    return fig


def performance_profiles(table: pd.DataFrame, ci: str) -> Figure:
    """rliable's performance profiles: fraction of runs with a final success rate above tau, with the
    interval as a band, one line per method (columns tau, method, fraction, low, high)."""
    from rliable import plot_utils

    methods = list(dict.fromkeys(table["method"]))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    profiles = {m: table.loc[table["method"] == m, "fraction"].to_numpy() for m in methods}
    cis = {m: table.loc[table["method"] == m, ["low", "high"]].to_numpy().T for m in methods}
    taus = table.loc[table["method"] == methods[0], "tau"].to_numpy()
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=cis,
        ax=ax,
        colors=_colors(methods),
        linestyles={m: "--" if m.endswith("(published)") else "solid" for m in methods},
        xlabel=r"final success rate $\tau$",
        ylabel=rf"fraction of runs > $\tau$ ({ci} CI)",
        labelsize="medium",
        ticklabelsize="medium",
        legend=True,
        legendsize="small",
    )
    return fig


def points_per_method(table: pd.DataFrame, y: str, ylabel: str, title: str) -> Figure:
    """Mean bar per method with every seed as a dot (columns method, seed, y)."""
    methods = sorted(table["method"].unique())
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2.5, 3.4))
    for i, method in enumerate(methods):
        values = table.loc[table["method"] == method, y].to_numpy(dtype=float)
        ax.bar(i, values.mean(), color=colors[method], alpha=0.6)
        ax.scatter(np.full(values.size, i), values, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def histories(
    table: pd.DataFrame,
    title: str,
    panels: list[tuple[str, str, str | float | None, bool]] | None = None,
    x_label: str = "update",
) -> Figure:
    """One panel per (metric, label, yardstick, log scale) of `panels` (default: every metric, titled by its
    name, no yardstick, linear) from the long table (columns step, metric, value, method, seed; `step` is
    the x-axis, named `x_label`), coloured by method. A method with one seed is one line; with several, each
    seed is a thin translucent line and their mean a thick one, at the steps every seed has (`seed_mean`).
    The yardstick is a constant (grey line) or another metric of the table (dashed, per run or as the seeds'
    mean: e.g. the untrained encoder's probe); None: none. Panels without data are left out."""
    if panels is None:
        panels = [(metric, metric, None, False) for metric in sorted(table["metric"].unique())]
    panels = [p for p in panels if (table["metric"] == p[0]).any()]
    cols = min(3, max(len(panels), 1))
    rows = max(-(-len(panels) // cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    colors = _colors(sorted(table["method"].unique()))
    for ax, (metric, heading, yardstick, log) in zip(axes.flat, panels, strict=False):
        for method, runs in table.groupby("method", sort=True):
            color = colors[method]
            seeds = sorted(runs["seed"].unique())
            line = seed_mean(runs, metric)
            if len(seeds) == 1:
                name = f"{method} s{seeds[0]}"
                ax.plot(line.index, line, color=color, lw=1.2, marker="o", ms=2, label=name)
            else:
                for _, run in runs.groupby("seed", sort=True):
                    own = seed_mean(run, metric)
                    ax.plot(own.index, own, color=color, lw=0.7, alpha=0.35)
                ax.plot(line.index, line, color=color, lw=2.2, label=f"{method} (mean of {len(seeds)} seeds)")
            if isinstance(yardstick, str):
                ref = seed_mean(runs, yardstick)
                ax.plot(ref.index, ref, "--", color=color, lw=0.8)
        if isinstance(yardstick, int | float):
            ax.axhline(yardstick, color="grey", lw=0.9, ls="--")
        if log:
            ax.set_yscale("log")
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_mean(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The mean over seeds of `metric` by step (one seed: its own line), at the steps every seed of `runs` has
    (a seed whose run is shorter or still going does not pull the mean's tail towards it)."""
    lines = runs.loc[runs["metric"] == metric].pivot_table(index="step", columns="seed", values="value")
    return lines.reindex(columns=sorted(runs["seed"].unique())).dropna().mean(axis=1).rename(metric)
