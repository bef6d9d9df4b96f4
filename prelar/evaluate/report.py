"""`prelar report`: gather the MLflow runs, aggregate them per method, write one self-contained HTML report.

The runs are read by the names of `prelar.metrics` (`prelar.evaluate.runs`), aggregated with rliable
(`prelar.evaluate.aggregate`, every estimate seeded with the top-level `seed`), drawn (`plots`) and laid
out on one page (`html`) with the machine it was written on (`prelar.machine`). When several runs share a
key ((method, task, seed) for success; (method, seed) otherwise), the latest one is used and the others
are listed as superseded.

Outputs in `report.out`: `report.html` (figures and GIFs embedded as base64), `figures/*.png`,
`gifs/*.gif`, and the plot data as CSV for `dvc plots show` with the templates `dvc_band.json` and
`dvc_runs.json` (see `prelar.evaluate.plots`): `curves.csv` (env_step, success, method, task, seed),
`published_curves.csv` (same columns), `aggregate_curve.csv` and `published_aggregate_curve.csv`
(env_step, method, source, iqm, low, high), `task_curves.csv` (env_step, method, task, mean, low, high),
`summary.csv` (the aggregate table), `probability_of_improvement.csv` (x, y, probability, low, high),
`performance_profiles.csv` (tau, method, fraction, low, high), `probe.csv` (method, seed, r2),
`controllability.csv` (horizon, method, delta_psnr, low, high), `transfer.csv` (updates, method, mse, low,
high), `pretrain_losses.csv` and `learning_curves.csv` (step, metric, value, method, seed). Every CSV is
written, with its header, even when its section was not run, so DVC outputs always exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from prelar import config, machine, methods
from prelar import metrics as names
from prelar.evaluate import aggregate, html, plots, runs

PROFILE_TAUS = (0.25, 0.5, 0.75)  # the performance profile's thresholds shown in its table
_RANK = {m.label: i for i, m in enumerate(methods.METHODS.values())}


def _order(method: str) -> tuple:
    """Methods in the registry's order (PreLAR first), each published result after ours."""
    base = method.removesuffix(runs.PUBLISHED_SUFFIX)
    return _RANK.get(base, len(_RANK)), base, method != base


def write_report(
    params: config.Params,
    out: str | Path,
    tracking_uri: str,
    experiment: str,
    published: str | None,
) -> Path:
    """Collect, aggregate, plot and write the report into `out`; returns the HTML path."""
    cfg, out = params.report, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    estimates = {"reps": cfg.bootstrap_reps, "seed": params.seed, "confidence": cfg.confidence}
    empty = pd.DataFrame(columns=runs.PUBLISHED_COLUMNS)
    published_curves = runs.read_published(published) if published else empty
    got = runs.collect(tracking_uri, experiment, cfg.gifs_per_method)
    tables = got.latest()
    both = [tables["curves"].assign(source="ours")]
    if not published_curves.empty:
        both.append(published_curves.assign(source="published"))
    stats = aggregate.summarize(pd.concat(both, ignore_index=True), **estimates, key=_order)
    stats["controllability"] = aggregate.mean_by(
        tables["controllability"], "horizon", "delta_psnr", **estimates
    )
    stats["transfer"] = aggregate.mean_by(tables["transfer"], "updates", "mse", **estimates)
    _write_csv(out, tables, published_curves, stats)

    page = html.Page(out)
    if got.store_note:
        page.text(got.store_note, cls="not-run")
    _success_sections(page, stats, cfg, params.seed)
    _evaluation_sections(page, tables, stats, f"{100 * cfg.confidence:.0f}%")
    _provenance_sections(page, got, params.profile, tracking_uri, experiment)
    return page.write("prelar report")


def _write_csv(
    out: Path, tables: dict[str, pd.DataFrame], published: pd.DataFrame, stats: dict[str, pd.DataFrame]
) -> None:
    """The plot data as CSV (every file, with its header, even when empty) and the DVC plot templates."""
    ours = stats["aggregate_curve"]["source"] == "ours"  # apart: published x-axes are ~100x longer
    csv = {
        "curves": tables["curves"],
        "published_curves": published,
        "summary": stats["summary"],
        "task_curves": stats["task_curves"],
        "aggregate_curve": stats["aggregate_curve"][ours],
        "published_aggregate_curve": stats["aggregate_curve"][~ours],
        "probability_of_improvement": stats["improvement"],
        "performance_profiles": stats["profiles"],
        "probe": tables["probe"],
        "pretrain_losses": tables["pretrain"],
        "learning_curves": tables["learning"],
        "controllability": stats["controllability"],
        "transfer": stats["transfer"],
    }
    for name, frame in csv.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / "dvc_band.json").write_text(plots.DVC_TEMPLATE_BAND)
    (out / "dvc_runs.json").write_text(plots.DVC_TEMPLATE_RUNS)


def _success_sections(page: html.Page, stats: dict[str, pd.DataFrame], cfg: config.Report, seed: int) -> None:
    """Aggregate success, probability of improvement, performance profiles and learning curves."""
    ci = f"{100 * cfg.confidence:.0f}%"
    page.heading("Aggregate success rate (final evaluation)")
    summary = stats["summary"]
    if summary.empty:
        page.not_run(f"no fine-tuning run logged `{names.SUCCESS_RATE}` and no published results were given")
        return
    page.text(
        f"IQM (25% trimmed mean over all runs x tasks) and mean, with {ci} stratified-bootstrap intervals "
        f"(rliable: {cfg.bootstrap_reps} replicates, runs resampled within each task, numpy seed {seed}). "
        f"Each run's score is its last `{names.SUCCESS_RATE}` evaluation."
    )
    page.table(html.summary_table(summary, ci))
    if summary["task_list"].nunique() > 1:
        page.text("Methods were run on different task sets: their aggregates are not directly comparable.")
    page.figure("interval_estimates", plots.interval_estimates(summary, ci))

    page.heading("Probability of improvement")
    if stats["improvement"].empty:
        page.not_run("no two methods of the same source were evaluated on the same tasks with every run")
    else:
        page.text(
            "P(X > Y): the probability that a run of X ends with a higher success rate than a run of Y on "
            f"the same task, averaged over tasks (rliable; Mann-Whitney U), with {ci} stratified "
            "independent-bootstrap intervals. Above 0.5 favours X. Pairs: methods of the same source "
            "evaluated on the same tasks with every run complete."
        )
        page.table(html.improvement_table(stats["improvement"], ci))
        page.figure("probability_of_improvement", plots.probability_of_improvement(stats["improvement"], ci))

    page.heading("Performance profiles")
    page.text(
        "Fraction of runs x tasks whose final success rate is above τ (rliable's score distributions), "
        f"with {ci} stratified-bootstrap bands. A profile above another everywhere dominates it."
    )
    page.table(html.profile_table(stats["profiles"], PROFILE_TAUS))
    page.figure("performance_profiles", plots.performance_profiles(stats["profiles"], ci))

    page.heading("Learning curves")
    labels = ("environment steps", "IQM success rate", f"Aggregate IQM across tasks ({ci} CI)")
    page.figure(
        "aggregate_curves", plots.band_panels(stats["aggregate_curve"], "env_step", "iqm", "source", *labels)
    )
    task_curves = stats["task_curves"]
    published = task_curves["method"].str.endswith(runs.PUBLISHED_SUFFIX)
    panels = task_curves["task"].where(~published, task_curves["task"] + runs.PUBLISHED_SUFFIX)
    labels = ("environment steps", "success rate", f"Per-task mean over seeds ({ci} CI)")
    page.figure(
        "task_curves",
        plots.band_panels(task_curves.assign(panel=panels), "env_step", "mean", "panel", *labels),
    )


def _evaluation_sections(
    page: html.Page, tables: dict[str, pd.DataFrame], stats: dict[str, pd.DataFrame], ci: str
) -> None:
    """Pre-training losses, the latent-action probe, controllability and offline transfer."""
    pretrain, probe, learning = tables["pretrain"], tables["probe"], tables["learning"]
    page.heading("When do latent actions become informative")
    if learning.empty:
        page.not_run(f"no run tagged stage=pretrain logged learning curves `{names.CURVE_PREFIX}*`")
    else:
        page.text(
            "Measured on held-out clips during pre-training (prelar/evaluate/curves.py), one colour per "
            "variant (several seeds: each a thin line, their mean a thick one). "
            "Probe R² of the latent-action mean → true action (dashed: the untrained encoder); ΔPSNR of "
            "open-loop prediction with the clip's own latent actions vs another clip's; open-loop MSE over "
            "the horizon divided by copying the last context frame (below 1: better than the yardstick); "
            "the action and dynamics KL terms; the consistency loss's ordering agreement (0.5: chance)."
        )
        page.figure(
            "learning_curves",
            plots.histories(learning, "Learning curves on held-out clips", names.CURVE_PANELS),
        )
    page.heading("Pre-training losses")
    if pretrain.empty:
        page.not_run(f"no run tagged stage=pretrain logged metrics named `{names.PRETRAIN_PREFIX}*`")
    else:
        page.figure("pretrain_losses", plots.histories(pretrain, "Pre-training losses per run"))
    page.heading("Latent-action probe")
    if probe.empty:
        page.not_run(f"no run logged `{names.PROBE_R2}` (stage=probe)")
    else:
        page.text(
            "Ridge regression from the latent-action mean to the true 4-d action on held-out episodes: "
            "R² (higher: latent actions carry the real action). Bars: mean over seeds; dots: seeds."
        )
        page.figure("probe_r2", plots.points_per_method(probe, "r2", "R²", "Latent-action probe R²"))
        page.table(probe)
    page.heading("Controllability (ΔPSNR)")
    if stats["controllability"].empty:
        page.not_run(f"no run logged `{names.DELTA_PSNR_PREFIX}<k>` (stage=controllability)")
    else:
        page.text(
            "Open-loop PSNR with inferred latent actions minus PSNR with latent actions shuffled across "
            f"the batch, per horizon (higher: the model uses its actions). Mean over seeds, {ci} CI."
        )
        labels = ("open-loop horizon (frames)", "ΔPSNR (dB)", "ΔPSNR")
        page.figure(
            "delta_psnr", plots.band_panels(stats["controllability"], "horizon", "delta_psnr", None, *labels)
        )
        page.table(stats["controllability"])
    page.heading("Offline transfer")
    if stats["transfer"].empty:
        page.not_run(f"no run logged `{names.TRANSFER_PREFIX}<K>` (stage=transfer)")
    else:
        page.text(
            "Action-conditioned open-loop prediction MSE after K fine-tuning updates with real actions "
            f"on fixed downstream episodes (lower is better). Mean over seeds, {ci} CI."
        )
        labels = ("fine-tuning updates K", "open-loop MSE", "Offline transfer")
        page.figure("transfer_mse", plots.band_panels(stats["transfer"], "updates", "mse", None, *labels))
        page.table(stats["transfer"])


def _provenance_sections(
    page: html.Page, got: runs.Collected, profile: str, tracking_uri: str, experiment: str
) -> None:
    """Sample predictions, the runs read (and skipped), the machine and command."""
    page.heading("Sample predictions")
    if got.gifs:
        page.gifs(got.gifs)
    else:
        page.not_run(f"no run has an artifact named `*{names.PREDICTION_GIF_SUFFIX}`")
    page.heading("Runs")
    if got.runs:
        page.table(pd.DataFrame(got.runs))
    else:
        page.not_run("no MLflow runs")
    if got.skipped:
        page.items("Skipped:", got.skipped)
    page.heading("Machine and command")
    rows = [
        *machine.describe(),
        ("profile", profile),
        ("MLflow store", f"{tracking_uri} (experiment '{experiment}')"),
    ]
    page.table(pd.DataFrame(rows, columns=["", "value"]))
    page.pre(f"mlflow ui --backend-store-uri {tracking_uri}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output folder (report.out)")
    parser.add_argument(
        "--published-results",
        default=None,
        help="CSV of published results: method, task, seed, env_step, success (report.published_results)",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (mlflow.tracking_uri)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (mlflow.experiment)")


def run(params: config.Params, args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or params.mlflow.tracking_uri
    path = write_report(
        params,
        out=args.out or params.report.out,
        tracking_uri=tracking_uri,
        experiment=args.experiment or params.mlflow.experiment,
        published=args.published_results or params.report.published_results,
    )
    print(f"report: {path.resolve()}  (open file://{path.resolve()} in a browser)")
    print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)")
    return 0
