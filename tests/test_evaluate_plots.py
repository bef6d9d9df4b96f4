"""The report's learning-curve figure: seeds as thin lines, their mean as a thick one where every seed has
a point; one seed stays one labelled line."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prelar.evaluate import plots


def _long(method: str, seed: int, steps: list[int], values: list[float], metric: str = "probe"):
    return pd.DataFrame({"step": steps, "metric": metric, "value": values, "method": method, "seed": seed})


def _table() -> pd.DataFrame:
    return pd.concat(
        [
            _long("prelar", 0, [0, 100, 200], [0.0, 0.3, 0.6]),
            _long("prelar", 1, [0, 100, 200], [0.2, 0.1, 0.0]),
            _long("prelar", 2, [0, 100], [0.1, 0.5]),  # still running: no point at 200
            _long("prelar", 0, [0, 100, 200], [-0.1, -0.1, -0.1], metric="untrained"),
            _long("prelar", 1, [0, 100, 200], [-0.3, -0.3, -0.3], metric="untrained"),
            _long("prelar", 2, [0, 100], [-0.2, -0.2], metric="untrained"),
            _long("apv", 0, [0, 100, 200], [1.0, 2.0, 3.0]),
        ],
        ignore_index=True,
    )


def test_seed_mean_keeps_the_steps_every_seed_has():
    mean = plots.seed_mean(_table().query("method == 'prelar'"), "probe")
    assert list(mean.index) == [0, 100]
    np.testing.assert_allclose(mean.to_numpy(), [0.1, 0.3])


def test_several_seeds_draw_a_labelled_mean_and_one_seed_its_own_line():
    fig = plots.histories(_table(), "curves", [("probe", "probe R²", "untrained", False)])
    ax = fig.axes[0]
    assert ax.get_title() == "probe R²"
    labelled = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(labelled) == {"prelar (mean of 3 seeds)", "apv s0"}
    mean = labelled["prelar (mean of 3 seeds)"]
    np.testing.assert_allclose(mean.get_xdata(), [0, 100])
    np.testing.assert_allclose(mean.get_ydata(), [0.1, 0.3])
    assert mean.get_linewidth() > max(line.get_linewidth() for line in ax.get_lines() if line is not mean)
    np.testing.assert_allclose(labelled["apv s0"].get_ydata(), [1.0, 2.0, 3.0])
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    # the yardstick: apv's own (none: apv has no "untrained" rows), then the seeds' mean for prelar
    assert [list(np.round(line.get_ydata(), 6)) for line in dashed] == [[], [-0.2, -0.2]]
    seeds = [
        line for line in ax.get_lines() if line.get_label().startswith("_") and line.get_linestyle() == "-"
    ]
    assert len(seeds) == 3 and all(line.get_alpha() < 1 for line in seeds)
