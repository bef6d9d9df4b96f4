import numpy as np
import pytest

from prelar.evaluate.aggregate import aggregate, aggregate_curve, interval, iqm, stratified_bootstrap


def test_iqm_of_known_arrays():
    assert iqm(np.arange(8.0)) == pytest.approx(3.5)  # middle half: 2, 3, 4, 5
    # The outlier and the lowest quarter are trimmed: middle half of (0,0,0,0,1,1,1,100) is (0,0,1,1).
    scores = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 100.0]])  # [runs=2, tasks=4]
    result = aggregate({"m": scores}, reps=200)["m"]
    assert result["iqm"] == pytest.approx(0.5)
    assert result["mean"] == pytest.approx(103.0 / 8)


def test_interval_contains_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    scores = {"a": rng.beta(2, 3, size=(5, 4)), "b": rng.beta(5, 2, size=(3, 4))}
    first = aggregate(scores, reps=1000, seed=3)
    for result in first.values():
        for stat in ("iqm", "mean"):
            low, high = result[f"{stat}_ci"]
            assert low < result[stat] < high
    assert aggregate(scores, reps=1000, seed=3) == first
    assert aggregate(scores, reps=1000, seed=4)["a"]["iqm_ci"] != first["a"]["iqm_ci"]


def test_bootstrap_resamples_runs_within_each_task():
    # Every run of task 0 scores 0 and of task 1 scores 1: resampling within tasks always keeps three 0s
    # and three 1s, so the interval collapses on 0.5. Pooled (unstratified) resampling would not.
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # [runs, tasks]
    assert interval(scores, "mean", reps=500) == (0.5, 0.5, 0.5)
    columns = [np.array([0.0, 0.1, 0.2]), np.array([5.0, 6.0])]
    draws = stratified_bootstrap(columns, reps=300, rng=np.random.default_rng(0))
    assert draws.shape == (300, 5)
    assert set(np.unique(draws[:, :3])) <= {0.0, 0.1, 0.2}
    assert set(np.unique(draws[:, 3:])) <= {5.0, 6.0}
    assert len(np.unique(draws[:, 3:])) == 2  # both runs of task 1 get drawn


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
    est = aggregate_curve(scores, "iqm", reps=200)
    assert est.shape == (3, 4)
    assert np.isnan(est[:, 3]).all()
    assert est[0, 0] == pytest.approx(iqm(scores[:, :, 0].ravel()))
    assert (est[1, :3] <= est[0, :3]).all() and (est[0, :3] <= est[2, :3]).all()


def test_agrees_with_rliable_reference_values():
    # rliable 1.2.0 `get_interval_estimates(..., reps=50000)` (percentile method) on these scores, run in
    # a separate environment (arch 7.2.0, pandas 2.3.3): point (IQM, mean) and 95% intervals.
    rng = np.random.default_rng(1)
    scores = {"a": rng.beta(2, 3, size=(8, 6)), "b": rng.beta(5, 2, size=(5, 6))}
    reference = {
        "a": ((0.3876, 0.3893), ((0.3303, 0.4446), (0.3413, 0.4377))),
        "b": ((0.7362, 0.7287), ((0.6739, 0.7944), (0.6836, 0.7728))),
    }
    ours = aggregate(scores, reps=50000, seed=0)
    for method, ((iqm_ref, mean_ref), (iqm_ci, mean_ci)) in reference.items():
        assert ours[method]["iqm"] == pytest.approx(iqm_ref, abs=1e-4)
        assert ours[method]["mean"] == pytest.approx(mean_ref, abs=1e-4)
        assert ours[method]["iqm_ci"] == pytest.approx(iqm_ci, abs=3e-3)  # Monte-Carlo error
        assert ours[method]["mean_ci"] == pytest.approx(mean_ci, abs=3e-3)
