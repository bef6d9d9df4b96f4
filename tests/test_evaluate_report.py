import base64
import io
import re
import time

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from scipy import stats

from prelar import cli
from prelar import metrics as names

TASKS = ("drawer-open-v3", "reach-v3")
STEPS = (0, 1000, 2000)


def _success(method: str, task: str, seed: int) -> list[float]:
    """A deterministic, distinct curve per run; PreLAR above APV."""
    top = (0.8 if method == "prelar" else 0.4) + 0.05 * seed + (0.1 if task == "reach-v3" else 0.0)
    return [0.0, top / 2, top]


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store):
    """A real sqlite MLflow store: fine-tuning curves, pre-training losses, evaluation metrics, a GIF."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = new_mlflow_store(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("prelar", artifact_location=(root / "artifacts").as_uri())
    gif = root / "open_loop.gif"
    frames = np.zeros((4, 32, 64, 3), np.uint8)
    frames[:, :, :32, 0] = np.arange(4)[:, None, None] * 60  # [T,H,W,3] truth | prediction
    iio.imwrite(gif, frames, extension=".gif", duration=100, loop=0)

    def finished(tags, metrics=(), histories=(), artifact=None, status="FINISHED"):
        run_id = client.create_run(exp, tags=tags).info.run_id
        for key, value in metrics:
            client.log_metric(run_id, key, value)
        for key, step, value in histories:
            client.log_metric(run_id, key, value, step=step)
        if artifact:
            client.log_artifact(run_id, str(artifact), artifact_path="figures")
        client.set_terminated(run_id, status)
        time.sleep(0.002)  # distinct start times: the later rerun must win
        return run_id

    for method in ("prelar", "apv"):
        for task in TASKS:
            for seed in (0, 1):
                curve = _success(method, task, seed)
                if (method, task, seed) == ("prelar", "drawer-open-v3", 0):
                    curve = [0.0, 0.0, 0.05]  # superseded by the rerun below
                finished(
                    {"stage": "finetune", "method": method, "task": task, "seed": str(seed)},
                    histories=[(names.SUCCESS_RATE, s, v) for s, v in zip(STEPS, curve, strict=True)]
                    + [("train/actor_loss", 0, 1.0)],  # not a pre-training loss: stage is finetune
                )
        finished(
            {"stage": "pretrain", "method": method, "seed": "0"},
            histories=[
                (f"{names.PRETRAIN_PREFIX}{k}", s, 10.0 / (s + 1)) for k in ("loss", "kl") for s in range(5)
            ]
            + [(f"{names.CURVE_PREFIX}{k}", s, 0.1 * s) for k in ("probe_r2", "kl_dyn") for s in range(3)],
            artifact=gif if method == "prelar" else None,
        )
        for seed in (0, 1):
            shift = 1.0 if method == "prelar" else 0.0
            finished(
                {"stage": "probe", "method": method, "seed": str(seed)},
                metrics=[
                    (names.PROBE_R2, 0.3 + 0.4 * shift + 0.01 * seed),
                    (names.delta_psnr_metric(5), 1.0 + shift),
                    (names.delta_psnr_metric(10), 2.0 + shift),
                    (names.transfer_metric(0), 0.02),
                    (names.transfer_metric(100), 0.01 - 0.005 * shift),
                ],
            )
    rerun = _success("prelar", "drawer-open-v3", 0)
    finished(
        {"stage": "finetune", "method": "prelar", "task": "drawer-open-v3", "seed": "0"},
        histories=[(names.SUCCESS_RATE, s, v) for s, v in zip(STEPS, rerun, strict=True)],
    )
    finished({"stage": "finetune", "method": "dreamerv2", "task": "reach-v3", "seed": "0"}, status="FAILED")
    partial = client.create_experiment("partial", artifact_location=(root / "artifacts2").as_uri())
    run_id = client.create_run(
        partial, tags={"stage": "finetune", "method": "prelar", "task": "reach-v3"}
    ).info.run_id
    client.log_metric(run_id, names.SUCCESS_RATE, 0.5, step=1000)
    client.set_terminated(run_id)
    return {"uri": uri, "root": root}


def _params(tmp_path, uri):
    path = tmp_path / "params.yaml"
    path.write_text(
        f"mlflow: {{tracking_uri: '{uri}'}}\nreport: {{bootstrap_reps: 200, gifs_per_method: 1}}\n"
    )
    return str(path)


def _report(tmp_path, uri, *extra):
    out = tmp_path / "reports"
    code = cli.main(["report", "--params", _params(tmp_path, uri), "--out", str(out), *extra])
    return code, out


def test_report_writes_table_figures_gifs_and_csv(store, tmp_path, capsys):
    code, out = _report(tmp_path, store["uri"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str((out / "report.html").resolve()) in printed
    assert f"mlflow ui --backend-store-uri {store['uri']}" in printed
    page = (out / "report.html").read_text()
    assert "Not run" not in page
    summary_table = page[page.index("<table") : page.index("</table>")]
    assert re.findall(r"<td>(PreLAR|APV)</td>", summary_table) == ["PreLAR", "APV"]  # labels, registry order
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # intervals, improvement, profiles, aggregate curves, task curves, learning curves, losses, probe, ΔPSNR,
    # transfer
    assert len(images) == 10
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size[0] > 100
    assert len(list((out / "figures").glob("*.png"))) == 10
    gifs = re.findall(r'src="data:image/gif;base64,([^"]+)"', page)
    assert len(gifs) == 1 and iio.imread(base64.b64decode(gifs[0]), index=None).shape[0] == 4
    assert "status FAILED" in page and "superseded by the later run" in page

    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["env_step", "success", "method", "task", "seed"]
    assert len(curves) == 2 * 2 * 2 * 3  # methods x tasks x seeds x evaluations
    rerun = curves.query("method == 'PreLAR' and task == 'drawer-open-v3' and seed == 0 and env_step == 2000")
    assert rerun["success"].tolist() == [pytest.approx(0.8)]  # the later run replaced the first

    summary = pd.read_csv(out / "summary.csv").set_index("method")
    for method, shown in (("prelar", "PreLAR"), ("apv", "APV")):
        finals = [_success(method, t, s)[-1] for t in TASKS for s in (0, 1)]
        assert summary.loc[shown, "iqm"] == pytest.approx(stats.trim_mean(finals, 0.25))
        assert summary.loc[shown, "iqm_low"] <= summary.loc[shown, "iqm"] <= summary.loc[shown, "iqm_high"]
        assert summary.loc[shown, "runs"] == 4
    # Every PreLAR run beats every APV run on its task: P(PreLAR > APV) = 1, its interval too.
    improvement = pd.read_csv(out / "probability_of_improvement.csv")
    assert improvement[["x", "y"]].values.tolist() == [["PreLAR", "APV"]]
    assert improvement[["probability", "low", "high"]].values.tolist() == [[1.0, 1.0, 1.0]]
    assert "P(X &gt; Y)" in page
    profiles = pd.read_csv(out / "performance_profiles.csv").set_index(["method", "tau"])["fraction"]
    assert profiles[("PreLAR", 0.0)] == profiles[("APV", 0.0)] == 1.0  # every final success is above 0
    assert profiles[("PreLAR", 0.75)] == 1.0 and profiles[("APV", 0.75)] == 0.0  # finals 0.8-0.95 vs 0.4-0.55
    assert profiles[("APV", 0.5)] == pytest.approx(0.25)  # 0.55 only
    aggregate_curve = pd.read_csv(out / "aggregate_curve.csv")
    assert sorted(aggregate_curve["env_step"].unique()) == list(STEPS)
    assert len(pd.read_csv(out / "task_curves.csv")) == 2 * 2 * 3
    assert pd.read_csv(out / "probe.csv").groupby("method")["r2"].mean()["PreLAR"] == pytest.approx(0.705)
    psnr = pd.read_csv(out / "controllability.csv").set_index(["horizon", "method"])
    assert psnr.loc[(10, "PreLAR"), "delta_psnr"] == pytest.approx(3.0)
    assert sorted(pd.read_csv(out / "transfer.csv")["updates"].unique()) == [0, 100]
    assert set(pd.read_csv(out / "pretrain_losses.csv")["metric"]) == {"train/loss", "train/kl"}
    learning = pd.read_csv(out / "learning_curves.csv")
    assert set(learning["metric"]) == {"curve/probe_r2", "curve/kl_dyn"} and len(learning) == 2 * 2 * 3
    assert (out / "dvc_band.json").exists() and (out / "dvc_runs.json").exists()


def test_published_results_are_plotted_beside_ours(store, tmp_path):
    published = tmp_path / "published.csv"
    rows = [
        {"method": "prelar", "task": t, "seed": s, "env_step": step, "success": 0.9 * step / 250_000}
        for t in TASKS
        for s in range(3)
        for step in (0, 125_000, 250_000)
    ]
    pd.DataFrame(rows).to_csv(published, index=False)
    code, out = _report(tmp_path, store["uri"], "--published-results", str(published))
    assert code == 0
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["PreLAR (published)", "source"] == "published"
    assert summary.loc["PreLAR (published)", "iqm"] == pytest.approx(0.9)
    assert summary.loc["PreLAR", "source"] == "ours"
    assert list(summary.index) == ["PreLAR", "PreLAR (published)", "APV"]
    assert len(pd.read_csv(out / "published_curves.csv")) == len(rows)
    assert "PreLAR (published)" in (out / "report.html").read_text()
    curve = pd.read_csv(out / "published_aggregate_curve.csv")
    assert set(curve["env_step"]) == {0, 125_000, 250_000} and set(curve["method"]) == {"PreLAR (published)"}
    # Ours and published runs are never paired: their budgets differ ~100x.
    assert pd.read_csv(out / "probability_of_improvement.csv")[["x", "y"]].values.tolist() == [
        ["PreLAR", "APV"]
    ]
    assert set(pd.read_csv(out / "aggregate_curve.csv")["source"]) == {"ours"}


def test_published_results_missing_column_is_a_clear_error(store, tmp_path, capsys):
    published = tmp_path / "published.csv"
    pd.DataFrame({"method": ["apv"], "task": ["reach-v3"], "seed": [0], "env_step": [0]}).to_csv(published)
    code, _ = _report(tmp_path, store["uri"], "--published-results", str(published))
    assert code == 2
    err = capsys.readouterr().err
    assert str(published) in err and "['success']" in err


def test_missing_sections_say_not_run(store, tmp_path):
    code, out = _report(tmp_path, store["uri"], "--experiment", "partial")
    assert code == 0
    page = (out / "report.html").read_text()
    assert "<td>PreLAR</td>" in page
    for missing in (
        "train/*",
        "curve/*",
        "probe/r2",
        "controllability/delta_psnr_h",
        "transfer/mse_k",
        "*.gif",
    ):
        assert re.search(rf"Not run: no run [^<]*{re.escape(missing)}", page), missing
    assert pd.read_csv(out / "probe.csv").empty

    code, out = _report(tmp_path, f"sqlite:///{tmp_path / 'absent.db'}")
    assert code == 0 and not (tmp_path / "absent.db").exists()
    page = (out / "report.html").read_text()
    assert "no MLflow store at" in page and page.count("Not run:") == 8
    assert list(pd.read_csv(out / "curves.csv").columns) == ["env_step", "success", "method", "task", "seed"]
