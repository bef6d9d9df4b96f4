"""Learning curves of pre-training: how well the world model predicts, and how much its latent actions carry,
measured on held-out data every `pretrain.curve_every` updates and at the end of the run.

One measurement (`Monitor.measure`), each part defined once elsewhere and called here:
- open-loop prediction (`prelar.evaluate.prediction.evaluate_prediction`): `pred_mse` over the horizon with
  the clip's own inferred latent actions, beside `pred_copy_last_frame_mse`, the model-free yardstick, and
  their ratio `pred_mse_ratio` (below 1: the model beats copying the last frame); `delta_psnr` (own vs
  another clip's latent actions; a `model.true_actions` model is given the clips' true actions instead);
- the latent-action probe (`prelar.evaluate.probe.latent_action_probe`, the probe stage's clips, split and
  seeds): `probe_r2`, beside `probe_r2_untrained` (a fresh encoder, measured once when the monitor is built);
- the objective's own terms on the held-out windows (`WorldModel.loss`, eval mode, a fixed generator):
  `kl_action` (nats, summed over the latent dims), `kl_dyn` (nats, summed over the categoricals),
  `consistency_agreement` (the fraction of pairs whose Δã and Δŝ orderings agree; 0.5 is chance).

The held-out data are chosen once (`Monitor.__init__`) so that every point of a curve measures the same
windows and episodes; the end-of-run evaluation (`prelar.pretrain.evaluate`) is the last measurement, so the
curve's last point and the stage's metrics agree.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prelar import config
from prelar.evaluate import prediction, probe
from prelar.world_model import check_action_dims, evaluating

CSV = "curves.csv"  # in the pre-training run folder: step, frames, then the measurements
PROBE_DATA = ("probe_clips", "probe_episodes", "probe_fit_clips")  # what each point's probe fits and scores


def held_out_clips(shards, params: config.Params) -> list:
    """The clips of the prediction windows: the first `pretrain.eval_clips` held-out clips
    (`loader.holdout_fraction`) of at least `evaluate.window` frames; a window is a clip's first frames."""
    from prelar.data.shards import iter_clips

    clips = []
    if params.pretrain.eval_clips > 0:
        for clip in iter_clips(shards, split="holdout", holdout_fraction=params.loader.holdout_fraction):
            if len(clip.frames) >= params.evaluate.window:
                clips.append(clip)
            if len(clips) == params.pretrain.eval_clips:
                break
    return clips


class Monitor:
    """The held-out data of the learning curves, and the measurement of a model on them."""

    def __init__(self, params: config.Params, shards, model_cfg: config.Model, dev: torch.device):
        self.params = params
        ev, cfg = params.evaluate, params.pretrain
        self.skipped: dict[str, str] = {}
        clips = held_out_clips(shards, params)
        # uint8 [N, context + horizon, 64, 64, 3]
        self.windows = np.stack([c.frames[: ev.window] for c in clips]) if clips else None
        self.actions = None  # the windows' true actions [N, T-1, A], for a model.true_actions model
        if model_cfg.true_actions and clips:
            missing = [str(c.meta["id"]) for c in clips if c.actions is None]
            if missing:
                raise ValueError(
                    f"held-out clips {missing[:3]} have no actions, and a model.true_actions model predicts "
                    "from them; use shards with actions (Meta-world, RLBench)"
                )
            self.actions = np.stack([c.actions[: ev.window - 1] for c in clips]).astype(np.float32)
            check_action_dims(self.actions.shape[-1], model_cfg)
        if self.windows is None:
            self.skipped["prediction_skipped"] = (
                f"no held-out clip of >= {ev.window} frames "
                f"(loader.holdout_fraction={params.loader.holdout_fraction}, "
                f"pretrain.eval_clips={cfg.eval_clips})"
            )
        self.probe_clips: list = []
        self.probe_fit_clips: list = []  # `evaluate.probe_fit`
        self.baseline: dict[str, Any] = {}
        if not model_cfg.latent_actions:
            self.skipped["probe_skipped"] = "no latent actions (action-free, or given true actions)"
        elif cfg.probe:
            try:
                self.probe_clips, split = probe.probe_clips(shards, params)
                self.probe_fit_clips = probe.probe_fit_clips(shards, params, self.probe_clips, split)
                rows = probe.latent_action_probe(
                    {}, self.probe_clips, ev, model_cfg, dev, self.probe_fit_clips
                )
            except ValueError as err:  # too few episodes or clips with true actions
                self.skipped["probe_skipped"] = str(err)
                self.probe_clips = []
            else:
                self.baseline = {
                    "probe_r2_untrained": float(np.mean([row["r2"] for row in rows])),
                    "probe_clips": len(self.probe_clips),
                    "probe_fit_clips": len(self.probe_fit_clips),  # 0 unless evaluate.probe_fit: pretraining
                    "probe_episodes": len({probe.episode_key(c) for c in self.probe_clips}),
                    "probe_clip_split": split,
                    "probe_target": ev.probe_target,
                }

    def check_continues(self, path: str | Path) -> None:
        """Refuse (a ConfigError naming `path`) to continue curves whose probe fit and scored other numbers
        of clips and episodes, or another target, than this monitor's (`PROBE_DATA`, `probe_target`): a run
        resumed with another `evaluate.probe_fit`, `evaluate.probe_clips`, `evaluate.probe_target` or
        `loader.holdout_fraction` would mix two probes in one curve. Counts and target only: a change that
        keeps them (`evaluate.seeds`, `probe_test_fraction`, the penalties) goes unnoticed. Curves from before
        `probe_fit_clips` and `probe_target` were recorded fit on held-out episodes (0), to the action."""
        path = Path(path)
        probed = [row for row in read(path) if row.get("probe_r2")] if path.exists() and self.baseline else []
        if not probed:
            return
        before = {k: int(float(probed[-1].get(k) or 0)) for k in PROBE_DATA}
        before["probe_target"] = probed[-1].get("probe_target") or "action"
        now = {k: int(self.baseline[k]) for k in PROBE_DATA} | {"probe_target": self.baseline["probe_target"]}
        if before != now:
            ev = self.params.evaluate
            raise config.ConfigError(
                f"{path}: its probe was measured on {before}, this run's would be on {now} "
                f"(evaluate.probe_fit={ev.probe_fit}, evaluate.probe_clips={ev.probe_clips}, "
                f"evaluate.probe_target={ev.probe_target}, "
                f"loader.holdout_fraction={self.params.loader.holdout_fraction}): resume with the settings "
                "it was trained with, or give it another --out"
            )

    def measure(self, model: nn.Module, figures: str | Path | None = None) -> dict[str, Any]:
        """The measurements of `model` (flat; `*_skipped` reasons for those that cannot run); with `figures`,
        also the prediction GIF and Fig. 1 grids written there."""
        result: dict[str, Any] = dict(self.skipped)
        if self.windows is not None:
            ev = self.params.evaluate
            with evaluating(model):
                result.update(
                    prediction.evaluate_prediction(model, self.windows, figures, ev.context, self.actions)
                )
                result["pred_mse_ratio"] = result["pred_mse"] / max(result["pred_copy_last_frame_mse"], 1e-12)
                frames = torch.from_numpy(self.windows).permute(0, 1, 4, 2, 3).to(_device(model))
                actions = None if self.actions is None else torch.from_numpy(self.actions).to(frames.device)
                generator = torch.Generator(device=frames.device).manual_seed(self.params.seed)
                _, terms, _ = model.loss(frames, generator, actions=actions)
            cfg = model.cfg
            latent = cfg.latent_actions
            for name, used in (
                ("kl_dyn", True),
                ("kl_action", latent and cfg.use_action_kl),
                ("consistency_agreement", latent and cfg.use_consistency),
            ):
                if used:  # (a term the variant does not have is left out, not logged as 0)
                    result[name] = terms[name].item()
        if self.probe_clips:
            ev, dev = self.params.evaluate, _device(model)
            with evaluating(model):
                rows = probe.latent_action_probe(
                    {"model": model}, self.probe_clips, ev, None, dev, self.probe_fit_clips
                )
            result["probe_r2"] = float(np.mean([row["r2"] for row in rows]))
            dims = [k for k in rows[0] if k.startswith("r2_dim")]
            result.update({f"probe_{k}": float(np.mean([row[k] for row in rows])) for k in dims})
            result.update(self.baseline)
        return result


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def numeric(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a measurement (what the curves and MLflow keep)."""
    return {k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}


LABELS = ("probe_target",)  # the text a curve point keeps beside its numbers (not an MLflow metric)


def labels(result: dict[str, Any]) -> dict[str, str]:
    """The `LABELS` of a measurement: what its numbers measured (e.g. which target the probe read)."""
    return {k: str(result[k]) for k in LABELS if k in result}


def append_row(path: str | Path, step: int, frames: int, values: dict[str, float | str]) -> None:
    """Add one point (update `step`, `frames` seen) to the curves CSV at `path` (header: every key so far);
    points at or after `step` (from an interrupted run, resumed from an earlier checkpoint) are replaced."""
    path = Path(path)
    rows = read(path) if path.exists() else []
    rows = [r for r in rows if int(float(r["step"])) < step]
    rows.append({"step": step, "frames": frames, **values})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
