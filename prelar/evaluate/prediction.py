"""Open-loop video prediction: the one measurement of it, and the controllability of latent actions.

- `windows`: the one way to cut sequences into non-overlapping windows of `evaluate.context` +
  `evaluate.horizon` frames.
- `predict`: the rollout of the world model (`prelar.world_model.OpenLoop.open_loop`) as every evaluation
  runs it: `context` frames observed, then the prior's mode imagined with the given actions.
- `open_loop_frame_mse`: its error, the mean squared error of each predicted frame (averaged over the
  frame's pixels and channels only): [B, H], one value per window and horizon step. `copy_last_frame_mse`:
  the same error of the model-free yardstick, the last context frame repeated.
- `swapped_action_psnr`: ΔPSNR as in Genie: PSNR with the clip's own actions minus PSNR with the actions of
  another clip of the batch (a cyclic shift, so that no clip keeps its own), per horizon; `controllability`:
  that of the clips' own inferred latent actions.
- `evaluate_prediction`: MSE / PSNR per horizon, the copy-last-frame MSE, ΔPSNR, a GIF of truth vs
  prediction, and the PreLAR supplementary's Fig. 1: (a) one start, three latent-action sequences; (b) one
  latent-action sequence, three starts.

For Fig. 1 the latent-action sequences are those inferred from other held-out clips (samples of the aggregate
posterior): they are coherent motions, where independent N(0, I) draws per step are not, and they exist for
every variant, including the one without the action KL (which has no prior to sample).

Pixel values are in [0, 1] for MSE and PSNR (PSNR = -10 log10 MSE).
Shape legend: B (or N) windows, T = context + H frames, H horizon, A latent action dims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import nn


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _frames(frames: np.ndarray | torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 [B,T,3,64,64] on the model's device, from uint8 [B,T,64,64,3] (numpy, as clips store them)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)  # [B,T,H,W,3] -> [B,T,3,H,W]
    return frames.to(_device(model))


def windows(sequences: Sequence[Mapping[str, np.ndarray]], length: int, limit: int) -> dict[str, np.ndarray]:
    """Up to `limit` non-overlapping windows of `length` steps, sequence by sequence from its first step.

    sequences: arrays with time first (e.g. frames [T, ..], actions [T, A]; `vars(episode)`). Returns each key
    stacked [N, length, ..] and is_first bool [N, length] (true at a sequence's first step).
    """
    picks = [(seq, s) for seq in sequences for s in range(0, len(seq["frames"]) - length + 1, length)][:limit]
    if not picks:
        raise ValueError(f"no sequence has the {length} frames of one open-loop window")
    is_first = np.zeros((len(picks), length), bool)
    is_first[:, 0] = [s == 0 for _, s in picks]
    keys = sequences[0].keys()
    return {k: np.stack([seq[k][s : s + length] for seq, s in picks]) for k in keys} | {"is_first": is_first}


def frame_mse(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each frame over its pixels and channels, values in [0, 1]: uint8 [.., 3, 64, 64]
    (broadcast) → [..]."""
    return ((pred.float() - truth.float()) / 255.0).pow(2).mean(dim=(-3, -2, -1))


@torch.no_grad()
def predict(
    model: nn.Module,
    frames: torch.Tensor,
    action: torch.Tensor | None,
    context: int,
    is_first: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The evaluation's open-loop prediction, uint8 [B, H, 3, 64, 64]: `model.open_loop` with the prior's mode
    after the context; the context's posterior samples come from `seed` (so that two calls differ only by what
    they are given). `action`: the RSSM's action input [B, T, A] (None: action-free)."""
    generator = torch.Generator(device=frames.device).manual_seed(seed)
    return model.open_loop(frames, context, action, is_first, generator, sample=False)


@torch.no_grad()
def open_loop_frame_mse(
    model: nn.Module,
    frames: torch.Tensor,
    action: torch.Tensor | None,
    context: int,
    is_first: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """`frame_mse` of `predict` against the true frames: [B, H], per window and horizon step."""
    return frame_mse(predict(model, frames, action, context, is_first, seed), frames[:, context:])


def copy_last_frame_mse(frames: torch.Tensor, context: int) -> torch.Tensor:
    """The yardstick without a model, the last context frame repeated: `frame_mse` [B, H] of frames uint8
    [B, T, 3, 64, 64]."""
    return frame_mse(frames[:, context - 1 : context], frames[:, context:])


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of pixel values in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _with_future(own: torch.Tensor, other: torch.Tensor, context: int) -> torch.Tensor:
    """The RSSM's action input [B,T,A]: the clip's own within the context, `other`'s when imagining."""
    return torch.cat([own[:, :context], other[:, context:]], dim=1)


@torch.no_grad()
def swapped_action_psnr(
    model: nn.Module, frames: torch.Tensor, action: torch.Tensor, context: int, seed: int = 0
) -> dict:
    """ΔPSNR per horizon step: PSNR of the open-loop prediction with each clip's own actions minus PSNR with
    another clip's (a cyclic shift, so that no clip keeps its own) for the imagined steps, averaged over
    clips; 0 dB: the prediction ignores the action.

    frames: uint8 [B,T,3,64,64], B >= 2; action: the RSSM's action input [B,T,A] (latent actions through
    `action_input`, or the real or encoded actions of a fine-tuned model). Returns tensors [T-context]:
    `psnr_own`, `psnr_shuffled`, `delta_psnr`; and `mse_own` [B, T-context], the own actions'
    `open_loop_frame_mse`.
    """
    if frames.shape[0] < 2:
        raise ValueError("ΔPSNR needs at least 2 clips (actions are swapped between clips)")
    shuffled = _with_future(action, action.roll(1, dims=0), context)  # clip b imagines with clip b-1's
    mse_own = open_loop_frame_mse(model, frames, action, context, seed=seed)  # [B, H]
    p_own = psnr(mse_own).mean(0)  # [H]
    p_shuffled = psnr(open_loop_frame_mse(model, frames, shuffled, context, seed=seed)).mean(0)
    return {"psnr_own": p_own, "psnr_shuffled": p_shuffled, "delta_psnr": p_own - p_shuffled,
            "mse_own": mse_own}


@torch.no_grad()
def real_action_prediction(
    model: nn.Module, frames: torch.Tensor, actions: torch.Tensor, context: int
) -> dict[str, float]:
    """A fine-tuning model's (`prelar.agent.model.FinetuneModel`) open-loop prediction of windows frames
    uint8 [B, T, 3, 64, 64] from their real actions [B, T, A] (replay convention; through the action encoder
    where it has one), measured as the learning curves measure a pre-trained model: `pred_mse`
    (`open_loop_frame_mse`, mean over windows and horizon) and `delta_psnr` (`swapped_action_psnr`, mean
    over the horizon)."""
    from prelar.world_model import evaluating

    with evaluating(model), model.autocast():
        action = model.latent_action(actions.to(model.device))  # [B, T, L] (L = A without an action encoder)
        frames = frames.to(model.device)
        result = swapped_action_psnr(model.world, frames, action, context)
    return {"pred_mse": float(result["mse_own"].float().mean()),
            "delta_psnr": float(result["delta_psnr"].float().mean())}


@torch.no_grad()
def controllability(model: nn.Module, frames: np.ndarray | torch.Tensor, context: int) -> dict:
    """`swapped_action_psnr` of the clips' own inferred latent actions (Genie's ΔPSNR).

    frames: uint8 [B,T,3,64,64] (or numpy [B,T,64,64,3]), B >= 2. Returns tensors [T-context]:
    `psnr_inferred`, `psnr_shuffled`, `delta_psnr`.
    """
    frames = _frames(frames, model)
    own, _ = model.infer_latent_actions(frames)  # [B,T-1,A]
    result = swapped_action_psnr(model, frames, model.action_input(own), context)
    return {"psnr_inferred": result["psnr_own"], "psnr_shuffled": result["psnr_shuffled"],
            "delta_psnr": result["delta_psnr"]}


def _hwc(frames: torch.Tensor) -> np.ndarray:
    """uint8 [...,3,H,W] -> numpy uint8 [...,H,W,3]."""
    return frames.movedim(-3, -1).cpu().numpy()


def _grid(rows: list[np.ndarray], context: int, scale: int = 2) -> np.ndarray:
    """Rows of frames uint8 [T,H,W,3] -> one image; a red bar separates context from prediction."""
    lines = []
    for row in rows:
        frames = list(row)
        bar = np.zeros_like(frames[0][:, :2])
        bar[..., 0] = 255
        lines.append(np.concatenate([*frames[:context], bar, *frames[context:]], axis=1))
    image = np.concatenate(lines, axis=0)
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def _write_figures(
    model, frames: torch.Tensor, own: torch.Tensor | None, pred, out: Path, context: int
) -> list:
    """GIF of truth | prediction (uint8 [n,H,3,64,64]); Fig. 1 (a) and (b) as PNG grids (needs 4 clips and
    latent actions)."""
    out.mkdir(parents=True, exist_ok=True)
    n = min(4, frames.shape[0])
    truth = frames[:n].cpu().movedim(2, -1).numpy()  # [n,T,64,64,3]
    context_frames = truth[:, :context]
    predicted = np.concatenate([context_frames, _hwc(pred[:n])], axis=1)  # [n,T,64,64,3]
    gif = [
        np.concatenate(
            [np.concatenate([t, p], axis=1) for t, p in zip(truth[:, i], predicted[:, i], strict=True)]
        )
        for i in range(truth.shape[1])
    ]  # per step: n rows of (truth | prediction)
    paths = [out / "open_loop.gif"]
    iio.imwrite(paths[0], [g.repeat(2, 0).repeat(2, 1) for g in gif], duration=120, loop=0)
    if own is None or frames.shape[0] < 4:
        return paths
    # (a) the start of clip 0 imagined with the latent actions of clips 1, 2, 3
    starts = frames[[0, 0, 0]]
    actions = model.action_input(_with_future(own[[0, 0, 0]], own[[1, 2, 3]], context))
    rows_a = [truth[0]] + list(
        np.concatenate([context_frames[[0, 0, 0]], _hwc(predict(model, starts, actions, context))], axis=1)
    )
    # (b) the starts of clips 1, 2, 3 imagined with the latent actions of clip 0
    starts = frames[[1, 2, 3]]
    actions = model.action_input(_with_future(own[[1, 2, 3]], own[[0, 0, 0]], context))
    rows_b = [truth[0]] + list(
        np.concatenate([context_frames[[1, 2, 3]], _hwc(predict(model, starts, actions, context))], axis=1)
    )
    paths += [out / "fig1a_one_start_three_actions.png", out / "fig1b_three_starts_one_action.png"]
    iio.imwrite(paths[1], _grid(rows_a, context))
    iio.imwrite(paths[2], _grid(rows_b, context))
    return paths


@torch.no_grad()
def evaluate_prediction(
    model: nn.Module,
    clips: np.ndarray,
    out: str | Path | None,
    context: int,
    actions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Open-loop prediction metrics and figures on held-out clips uint8 [N,T,64,64,3] (T = context + horizon).

    The latent actions are the posterior means inferred from the clip itself (they see the future frame pairs
    by design); a `model.true_actions` model is given the clips' true `actions` [N, T-1, A] instead.
    Returns flat metrics: `pred_mse` (`open_loop_frame_mse` averaged over clips and horizon),
    `pred_copy_last_frame_mse` (the yardstick's, likewise), `pred_psnr` (mean over the horizon),
    `pred_psnr_h{k}` for k = 1, 5, 10, ..., the last step; `delta_psnr` (and per horizon) when the model has
    (latent or true) actions and N >= 2. Writes `open_loop.gif` and, with N >= 4 and actions, the two Fig. 1
    grids into `out` (None: no figures).
    """
    frames = _frames(clips, model)  # uint8 [N,T,3,64,64]
    if model.cfg.true_actions:
        if actions is None or actions.shape[:2] != (frames.shape[0], frames.shape[1] - 1):
            raise ValueError(
                f"a model.true_actions model predicts from the clips' true actions [N, T-1, A] = "
                f"[{frames.shape[0]}, {frames.shape[1] - 1}, A]; got "
                f"{None if actions is None else actions.shape}"
            )
        own = torch.as_tensor(actions, dtype=torch.float32, device=frames.device)  # [N,T-1,A]
    else:
        own = model.infer_latent_actions(frames)[0] if model.cfg.latent_actions else None  # [N,T-1,A]
    action = None if own is None else model.action_input(own)  # [N,T,A]
    mse = open_loop_frame_mse(model, frames, action, context)  # [N,H]
    per_step = psnr(mse).mean(0)  # [H]
    horizon = per_step.shape[0]
    result: dict[str, Any] = {
        "pred_clips": int(frames.shape[0]),
        "pred_mse": mse.mean().item(),
        "pred_copy_last_frame_mse": copy_last_frame_mse(frames, context).mean().item(),
        "pred_psnr": per_step.mean().item(),
    }
    for k in sorted({1, 5, 10, 15, 20, horizon} & set(range(1, horizon + 1))):
        result[f"pred_psnr_h{k}"] = per_step[k - 1].item()
    if own is not None and frames.shape[0] >= 2:
        delta = swapped_action_psnr(model, frames, action, context)["delta_psnr"]  # [H]
        result["delta_psnr"] = delta.mean().item()
        result[f"delta_psnr_h{horizon}"] = delta[-1].item()
    if out is not None:
        pred = predict(model, frames[:4], None if action is None else action[:4], context)  # [≤4,H,3,64,64]
        _write_figures(model, frames, own, pred, Path(out), context)
    return result
