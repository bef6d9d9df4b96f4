"""The report's one HTML page: sections, tables and figures, with every figure and GIF embedded (base64)
and also written beside it (`figures/*.png`, `gifs/*.gif`)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import pandas as pd

from prelar.evaluate import plots

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee}.not-run{color:#a33;font-style:italic}
.note{color:#555;font-size:0.9em}.gifs figure{display:inline-block;margin:0.5em;text-align:center}
.gifs img{width:256px;image-rendering:pixelated}pre{background:#f6f6f6;padding:0.7em;overflow-x:auto}"""


def intervals(low: pd.Series, high: pd.Series) -> list[str]:
    """Interval ends as shown in a table: "[low, high]"."""
    return [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(low, high, strict=True)]


class Page:
    """Accumulates the HTML body and the figure/GIF files beside it."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "gifs").mkdir(parents=True, exist_ok=True)

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, text: str) -> None:
        self.add(f"<h2>{escape(text)}</h2>")

    def text(self, text: str, cls: str = "note") -> None:
        self.add(f'<p class="{cls}">{escape(text)}</p>')

    def not_run(self, what: str) -> None:
        self.add(f'<p class="not-run">Not run: {escape(what)}</p>')

    def pre(self, text: str) -> None:
        self.add(f"<pre>{escape(text)}</pre>")

    def items(self, intro: str, items: list[str]) -> None:
        self.add(f"<p>{escape(intro)}</p><ul>" + "".join(f"<li>{escape(s)}</li>" for s in items) + "</ul>")

    def figure(self, name: str, fig) -> None:
        data = plots.png_bytes(fig)
        (self.out / "figures" / f"{name}.png").write_bytes(data)
        self.add(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')

    def table(self, frame: pd.DataFrame) -> None:
        self.add(frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", border=0))

    def gifs(self, gifs: list[tuple[str, bytes]]) -> None:
        """GIFs with their captions, side by side."""
        self.add('<div class="gifs">')
        for index, (caption, data) in enumerate(gifs):
            (self.out / "gifs" / f"prediction_{index}.gif").write_bytes(data)
            self.add(
                f'<figure><img alt="prediction {index}" src="data:image/gif;base64,'
                f'{base64.b64encode(data).decode()}"><figcaption>{escape(caption)}</figcaption></figure>'
            )
        self.add("</div>")

    def write(self, title: str) -> Path:
        path = self.out / "report.html"
        path.write_text(
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>\n"
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )
        return path


# ---- tables as shown ----------------------------------------------------------------------------------


def summary_table(summary: pd.DataFrame, ci: str) -> pd.DataFrame:
    """The aggregate table: intervals as "[low, high]" next to their point estimates."""
    shown = {name: summary[name] for name in ("method", "source", "tasks", "runs")}
    for stat, name in (("iqm", "IQM"), ("mean", "mean")):
        shown[name] = summary[stat]
        shown[f"{name} {ci} CI"] = intervals(summary[f"{stat}_low"], summary[f"{stat}_high"])
    shown["final env step"] = summary["final_env_step"]
    shown["tasks evaluated"] = summary["task_list"]
    return pd.DataFrame(shown)


def improvement_table(improvement: pd.DataFrame, ci: str) -> pd.DataFrame:
    """One row per pair: X, Y, P(X > Y) and its interval."""
    return pd.DataFrame(
        {
            "X": improvement["x"],
            "Y": improvement["y"],
            "P(X > Y)": improvement["probability"],
            f"{ci} CI": intervals(improvement["low"], improvement["high"]),
        }
    )


def profile_table(profiles: pd.DataFrame, taus: tuple[float, ...]) -> pd.DataFrame:
    """One row per method: the fraction of runs above each of `taus`, "fraction [low, high]"."""
    shown = profiles[profiles["tau"].round(6).isin(taus)]
    cells = [f"{f:.2f} [{lo:.2f}, {hi:.2f}]" for f, lo, hi in shown[["fraction", "low", "high"]].to_numpy()]
    wide = shown.assign(cell=cells, column=[f"runs > {tau:g}" for tau in shown["tau"]])
    return (
        wide.pivot(index="method", columns="column", values="cell")
        .loc[list(dict.fromkeys(shown["method"]))]
        .rename_axis(columns=None)
        .reset_index()
    )
