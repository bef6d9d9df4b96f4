"""Open-loop video prediction of a pre-trained world model, and the controllability of its latent actions.

- `open_loop_mse`: observe `CONTEXT` frames, then imagine `HORIZON` frames with given (or, for the
  action-free model, no) latent actions; squared error per clip and horizon step.
- `controllability`: ΔPSNR as in Genie: PSNR with the clip's own inferred latent actions minus PSNR with the
  latent actions of another clip of the batch (a cyclic shift, so that no clip keeps its own), per horizon.
- `evaluate_prediction`: MSE / PSNR per horizon, ΔPSNR, a GIF of truth vs prediction, and the PreLAR
  supplementary's Fig. 1: (a) one start, three latent-action sequences; (b) one latent-action sequence,
  three starts.

For Fig. 1 the latent-action sequences are those inferred from other held-out clips (samples of the aggregate
posterior): they are coherent motions, where independent N(0, I) draws per step are not, and they exist for
every variant, including the one without the action KL (which has no prior to sample).

Pixel values are in [0, 1] for MSE and PSNR (PSNR = -10 log10 MSE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import nn

CONTEXT = 5
HORIZON = 20


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _frames(frames: np.ndarray | torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 [B,T,3,64,64] on the model's device, from uint8 [B,T,64,64,3] (numpy, as clips store them)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)  # [B,T,H,W,3] -> [B,T,3,H,W]
    return frames.to(_device(model))


def _with_future(own: torch.Tensor, other: torch.Tensor, context: int) -> torch.Tensor:
    """Latent actions [B,T-1,A]: the clip's own within the context, `other`'s from its last frame on."""
    return torch.cat([own[:, : context - 1], other[:, context - 1 :]], dim=1)


@torch.no_grad()
def predict(
    model: nn.Module, frames: torch.Tensor, latent_actions: torch.Tensor | None, context: int = CONTEXT
) -> torch.Tensor:
    """Open-loop prediction, float [B,T-context,3,64,64] in [0, 1]: the prior's mode after the context, whose
    posterior samples come from a fixed seed (so that two calls differ only by what they are given)."""
    generator = torch.Generator(device=frames.device).manual_seed(0)
    pred = model.open_loop(
        frames, context=context, latent_actions=latent_actions, generator=generator, sample=False
    )  # uint8 [B,T-context,3,64,64]
    return pred.float() / 255.0


@torch.no_grad()
def open_loop_mse(
    model: nn.Module, frames: torch.Tensor, latent_actions: torch.Tensor | None, context: int = CONTEXT
) -> torch.Tensor:
    """Squared error per clip and predicted step: [B, T-context]."""
    truth = frames[:, context:].float() / 255.0  # [B,H,3,64,64]
    pred = predict(model, frames, latent_actions, context)  # [B,H,3,64,64]
    return ((pred - truth) ** 2).mean(dim=(2, 3, 4))


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of pixel values in [0, 1]."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def controllability(model: nn.Module, frames: np.ndarray | torch.Tensor, context: int = CONTEXT) -> dict:
    """ΔPSNR per horizon step: PSNR(own inferred latent actions) − PSNR(another clip's), averaged over clips.

    frames: uint8 [B,T,3,64,64] (or numpy [B,T,64,64,3]), B >= 2. Returns tensors [T-context]:
    `psnr_inferred`, `psnr_shuffled`, `delta_psnr`.
    """
    frames = _frames(frames, model)
    if frames.shape[0] < 2:
        raise ValueError("controllability needs at least 2 clips (latent actions are swapped between clips)")
    own, _ = model.infer_latent_actions(frames)  # [B,T-1,A]
    shuffled = _with_future(own, own.roll(1, dims=0), context)  # clip b imagines with clip b-1's actions
    p_own = psnr(open_loop_mse(model, frames, own, context)).mean(0)  # [H]
    p_shuffled = psnr(open_loop_mse(model, frames, shuffled, context)).mean(0)  # [H]
    return {"psnr_inferred": p_own, "psnr_shuffled": p_shuffled, "delta_psnr": p_own - p_shuffled}


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [...,3,H,W] in [0,1] -> uint8 [...,H,W,3]."""
    return (images.clamp(0, 1) * 255).round().byte().movedim(-3, -1).cpu().numpy()


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
    """GIF of truth | prediction; Fig. 1 (a) and (b) as PNG grids (needs 4 clips and latent actions)."""
    out.mkdir(parents=True, exist_ok=True)
    n = min(4, frames.shape[0])
    truth = frames[:n].cpu().movedim(2, -1).numpy()  # [n,T,64,64,3]
    context_frames = truth[:, :context]
    predicted = np.concatenate([context_frames, _to_uint8(pred[:n])], axis=1)  # [n,T,64,64,3]
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
    actions = _with_future(own[[0, 0, 0]], own[[1, 2, 3]], context)
    rows_a = [truth[0]] + list(
        np.concatenate(
            [context_frames[[0, 0, 0]], _to_uint8(predict(model, starts, actions, context))], axis=1
        )
    )
    # (b) the starts of clips 1, 2, 3 imagined with the latent actions of clip 0
    starts = frames[[1, 2, 3]]
    actions = _with_future(own[[1, 2, 3]], own[[0, 0, 0]], context)
    rows_b = [truth[0]] + list(
        np.concatenate(
            [context_frames[[1, 2, 3]], _to_uint8(predict(model, starts, actions, context))], axis=1
        )
    )
    paths += [out / "fig1a_one_start_three_actions.png", out / "fig1b_three_starts_one_action.png"]
    iio.imwrite(paths[1], _grid(rows_a, context))
    iio.imwrite(paths[2], _grid(rows_b, context))
    return paths


@torch.no_grad()
def evaluate_prediction(
    model: nn.Module, clips: np.ndarray, out: str | Path, context: int = CONTEXT
) -> dict[str, Any]:
    """Open-loop prediction metrics and figures on held-out clips uint8 [N,T,64,64,3] (T = context + horizon).

    Returns flat metrics: `pred_mse`, `pred_psnr` (mean over the horizon), `pred_psnr_h{k}` for k = 1, 5, 10,
    ..., the last step; `delta_psnr` (and per horizon) when the model has latent actions and N >= 2.
    Writes `open_loop.gif` and, with N >= 4 and latent actions, the two Fig. 1 grids into `out`.
    """
    frames = _frames(clips, model)  # uint8 [N,T,3,64,64]
    own = None if model.cfg.action_free else model.infer_latent_actions(frames)[0]  # [N,T-1,A]
    mse = open_loop_mse(model, frames, own, context)  # [N,H]
    per_step = psnr(mse).mean(0)  # [H]
    horizon = per_step.shape[0]
    result: dict[str, Any] = {
        "pred_clips": int(frames.shape[0]),
        "pred_mse": mse.mean().item(),
        "pred_psnr": per_step.mean().item(),
    }
    for k in sorted({1, 5, 10, 15, 20, horizon} & set(range(1, horizon + 1))):
        result[f"pred_psnr_h{k}"] = per_step[k - 1].item()
    if own is not None and frames.shape[0] >= 2:
        delta = controllability(model, frames, context)["delta_psnr"]  # [H]
        result["delta_psnr"] = delta.mean().item()
        result[f"delta_psnr_h{horizon}"] = delta[-1].item()
    pred = predict(model, frames[:4], None if own is None else own[:4], context)
    _write_figures(model, frames, own, pred, Path(out), context)
    return result
