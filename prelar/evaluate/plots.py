"""Figures of the report (matplotlib, headless) and the DVC plot templates for the same data.

Every function takes plain tables (pandas DataFrames in the long format the report writes as CSV) and
returns a `Figure`; the report saves it as PNG and embeds it. Intervals are drawn as shaded bands.
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
    table: pd.DataFrame, x: str, y: str, panel: str | None, xlabel: str, ylabel: str, title: str
) -> Figure:
    """Lines with interval bands per method (columns x, method, y, low, high), one panel per `panel` value.

    Methods labelled "(published)" are dashed.
    """
    panels = sorted(table[panel].unique()) if panel else [None]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False, sharey=True)
    colors = _colors(sorted(table["method"].unique()))
    for ax, name in zip(axes.flat, panels, strict=False):
        part = table if name is None else table[table[panel] == name]
        for method, frame in part.groupby("method", sort=True):
            _band(ax, frame, x, y, colors[method], method, dashed=method.endswith("(published)"))
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


def interval_estimates(summary: pd.DataFrame) -> Figure:
    """rliable-style point-and-interval plot: IQM and mean with 95% CIs, one row per method."""
    methods = list(summary["method"])
    colors = _colors(methods)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(methods) + 1.4), sharey=True)
    for ax, stat in zip(axes, ("iqm", "mean"), strict=True):
        for i, row in enumerate(summary.itertuples()):
            low, high = getattr(row, f"{stat}_low"), getattr(row, f"{stat}_high")
            ax.barh(i, high - low, left=low, height=0.6, color=colors[row.method], alpha=0.6)
            ax.plot([getattr(row, stat)] * 2, [i - 0.3, i + 0.3], color="k", lw=2)
        low, high = summary[f"{stat}_low"].min(), summary[f"{stat}_high"].max()
        pad = 0.05 * (high - low) + 0.02
        ax.set_xlim(low - pad, high + pad)
        ax.set_title({"iqm": "IQM", "mean": "Mean"}[stat])
        ax.set_xlabel("success rate")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)), methods)
    fig.tight_layout()
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


def histories(table: pd.DataFrame, title: str) -> Figure:
    """One panel per metric (columns step, metric, value, method, seed), one line per run."""
    metrics = sorted(table["metric"].unique())
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    colors = _colors(sorted(table["method"].unique()))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        part = table[table["metric"] == metric]
        for (method, seed), frame in part.groupby(["method", "seed"], sort=True):
            frame = frame.sort_values("step")
            ax.plot(frame["step"], frame["value"], color=colors[method], lw=1, label=f"{method} s{seed}")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
