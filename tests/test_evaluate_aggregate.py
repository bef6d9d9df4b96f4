import numpy as np
import pytest
from rliable import library, metrics

from prelar.evaluate.aggregate import (
    TAUS,
    aggregate,
    interval_estimates,
    performance_profile,
    probability_of_improvement,
)


def test_iqm_of_known_arrays():
    assert aggregate({"m": np.arange(8.0)[:, None]}, reps=50)["m"]["iqm"] == pytest.approx(3.5)  # 2, 3, 4, 5
    # The outlier and the lowest quarter are trimmed: middle half of (0,0,0,0,1,1,1,100) is (0,0,1,1).
    scores = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 100.0]])  # [runs=2, tasks=4]
    result = aggregate({"m": scores}, reps=200)["m"]
    assert result["iqm"] == pytest.approx(0.5)
    assert result["mean"] == pytest.approx(103.0 / 8)


def test_interval_contains_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    scores = {"a": rng.beta(2, 3, size=(5, 4)), "b": rng.beta(5, 2, size=(3, 4))}
    np.random.seed(123)
    untouched = np.random.random()
    np.random.seed(123)
    first = aggregate(scores, reps=200, seed=3)
    assert np.random.random() == untouched  # numpy's global random state is restored
    for result in first.values():
        for stat in ("iqm", "mean"):
            low, high = result[f"{stat}_ci"]
            assert low < result[stat] < high
    assert aggregate(scores, reps=200, seed=3) == first
    assert aggregate(scores, reps=200, seed=4)["a"]["iqm_ci"] != first["a"]["iqm_ci"]


def test_bootstrap_resamples_runs_within_each_task():
    # Every run of task 0 scores 0 and of task 1 scores 1: resampling within tasks always keeps three 0s
    # and three 1s, so the interval collapses on 0.5. Pooled (unstratified) resampling would not.
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # [runs, tasks]
    est = interval_estimates(scores[:, :, None], ("mean",), reps=300)["mean"]  # [3, steps=1]
    assert est[:, 0].tolist() == [0.5, 0.5, 0.5]


def test_missing_runs_resample_only_the_task_s_own_runs():
    scores = np.array([[0.0, 1.0], [0.0, np.nan], [0.0, np.nan]])
    result = aggregate({"m": scores}, reps=300)["m"]
    assert result["mean"] == pytest.approx(0.25)
    assert result["mean_ci"] == pytest.approx((0.25, 0.25))
    assert (result["runs"], result["tasks"]) == (4, 2)
    with pytest.raises(ValueError, match=r"apv: task column\(s\) \[1\]"):
        aggregate({"apv": np.array([[0.5, np.nan], [0.2, np.nan]])})
    with pytest.raises(ValueError, match="runs, tasks"):
        aggregate({"apv": np.zeros(3)})


def test_curve_shape_and_steps_without_every_task():
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(3, 2, 4))  # [runs, tasks, steps]
    scores[:, 1, 3] = np.nan  # task 1 not evaluated at the last step yet
    scores[2, 0, 2] = np.nan  # run 2 of task 0 not at step 2
    est = interval_estimates(scores, ("iqm", "task_mean"), reps=200)
    assert est["iqm"].shape == (3, 4) and est["task_mean"].shape == (3, 2, 4)
    assert np.isnan(est["iqm"][:, 3]).all() and np.isnan(est["task_mean"][:, 1, 3]).all()
    assert est["iqm"][0, 0] == pytest.approx(metrics.aggregate_iqm(scores[:, :, 0]))
    assert est["iqm"][0, 2] == pytest.approx(metrics.aggregate_iqm(np.r_[scores[:2, 0, 2], scores[:, 1, 2]]))
    assert est["task_mean"][0, :, 1] == pytest.approx(scores[:, :, 1].mean(axis=0))
    assert est["task_mean"][0, 0, 2] == pytest.approx(scores[:2, 0, 2].mean())
    assert (est["iqm"][1, :3] <= est["iqm"][0, :3]).all() and (est["iqm"][0, :3] <= est["iqm"][2, :3]).all()


def test_agrees_with_rliable():
    # rliable 1.2.0 `get_interval_estimates(..., reps=50000)` (percentile method) on these scores: point
    # (IQM, mean) and 95% intervals; ours runs 2000 replicates, so the ends agree within Monte-Carlo error.
    rng = np.random.default_rng(1)
    scores = {"a": rng.beta(2, 3, size=(8, 6)), "b": rng.beta(5, 2, size=(5, 6))}
    reference = {
        "a": ((0.3876, 0.3893), ((0.3303, 0.4446), (0.3413, 0.4377))),
        "b": ((0.7362, 0.7287), ((0.6739, 0.7944), (0.6836, 0.7728))),
    }
    ours = aggregate(scores, reps=2000, seed=0)
    for method, ((iqm_ref, mean_ref), (iqm_ci, mean_ci)) in reference.items():
        assert ours[method]["iqm"] == pytest.approx(iqm_ref, abs=1e-4)
        assert ours[method]["mean"] == pytest.approx(mean_ref, abs=1e-4)
        assert ours[method]["iqm_ci"] == pytest.approx(iqm_ci, abs=3e-3)  # Monte-Carlo error
        assert ours[method]["mean_ci"] == pytest.approx(mean_ci, abs=3e-3)
    # A complete matrix goes to rliable as it is, with numpy's global seed: the same resamples, so the same
    # numbers (up to rounding: our mean pools the runs, rliable's averages the task means).
    np.random.seed(5)
    func = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])  # noqa: E731
    _, direct = library.get_interval_estimates({"a": scores["a"]}, func, reps=300)  # [2, (IQM, mean)]
    ours = aggregate({"a": scores["a"]}, reps=300, seed=5)["a"]
    assert ours["iqm_ci"] == pytest.approx(tuple(direct["a"][:, 0]), rel=1e-12)
    assert ours["mean_ci"] == pytest.approx(tuple(direct["a"][:, 1]), rel=1e-12)


def test_probability_of_improvement():
    x = np.array([[1.0, 0.9], [3.0, 0.8]])  # [runs, tasks]
    y = np.array([[2.0, 0.1], [0.0, 0.2], [0.5, 0.3]])
    # Task 0: X beats Y in 5 of 6 pairs (1 < 2); task 1: in all 6. Averaged over tasks: 11/12.
    point, low, high = probability_of_improvement(x, y, reps=200)
    assert point == pytest.approx(11 / 12)
    assert low <= point <= high <= 1.0
    point, low, high = probability_of_improvement(y, y, reps=200)
    assert point == 0.5 and low < 0.5 < high  # the same runs: a tie (resampled apart, either way)
    assert probability_of_improvement(x, y, reps=200, seed=1) == probability_of_improvement(
        x, y, reps=200, seed=1
    )
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(x, y[:, :1])
    with pytest.raises(ValueError, match="no NaN"):
        probability_of_improvement(x, np.where(y > 1, np.nan, y))


def test_performance_profile_counts_runs_above_tau():
    scores = np.array([[0.2, 0.6], [0.4, 0.8]])  # [runs, tasks]
    est = performance_profile(scores, reps=100)  # [3, taus]
    assert est.shape == (3, len(TAUS))
    at = {tau: k for k, tau in enumerate(np.round(TAUS, 6))}
    assert est[0, at[0.0]] == 1.0 and est[0, at[0.5]] == 0.5 and est[0, at[1.0]] == 0.0
    assert (est[1] <= est[0]).all() and (est[0] <= est[2]).all()
    ragged = performance_profile(np.array([[0.2, 0.6], [np.nan, 0.8]]), reps=100)
    assert ragged[0, at[0.5]] == pytest.approx(2 / 3)  # the missing run is not counted
