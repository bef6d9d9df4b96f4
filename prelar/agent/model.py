"""The fine-tuned world model of every method (PreLAR Eq. 10–11), built from one `method` switch.

    method      world model                                  action into the RSSM   bonus source
    dreamerv2   WorldModel, random init                      real action            (no bonus)
    apv         StackedWorldModel on the action-free ckpt    real action            action-free states
    prelar*     WorldModel from the PreLAR ckpt without      ActionEncoder(a_t)     encoder embedding
                inverse dynamics (the three variants differ
                only in the checkpoint they load)
    naive_ft    action-conditional WorldModel initialised    real action            (no bonus)
                from the action-free ckpt; the RSSM's action
                input layer starts fresh (APV Fig. 6a)
    true_action WorldModel from the ckpt pre-trained with    real action            (no bonus)
                true actions (not in the papers: a yardstick)

Every method gets a reward head p_θ(r_t | s_t) trained on r_t; methods with a bonus add the auxiliary
reward head trained on r_t + β·r_int_t (Eq. 11), which is then the reward that behaviour learning
maximises (APV App. D). Parameters that came from a checkpoint's encoder and RSSM form the `frozen`
group (lr 0 for the first `freeze_updates` updates, APV's `enc_lr_type: no_pretrain`).

Shape legend: B batch, T time, A real action dims, L latent action dims, F features, E embedding.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prelar import checkpoint, config, device, losses, methods
from prelar.agent.action_encoder import ActionEncoder
from prelar.agent.bonus import IntrinsicBonus
from prelar.nets.heads import MLP
from prelar.nets.rssm import State
from prelar.world_model import StackedWorldModel, WorldModel, preprocess

ACTION_DIM = 4  # Meta-world: end-effector xyz displacement + gripper


def method_spec(name: str) -> methods.Method:
    """The registered method `name` (prelar/methods.py); a ConfigError naming `finetune.method` otherwise."""
    try:
        return methods.method(name)
    except ValueError as err:
        raise config.ConfigError(f"finetune.method: {err}") from None


def load_pretrained(
    method: str, path: str | Path | None, model_params: config.Model
) -> tuple[WorldModel | None, dict[str, Any]]:
    """The pre-trained `WorldModel` a method starts from (None for dreamerv2), checked against the method.

    Fails with a message naming the parameter and the fix: a method that needs a checkpoint without
    `finetune.pretrained`, a checkpoint of the wrong kind (e.g. action-free for prelar), or a latent-action
    size other than `model.latent_action_dim`.
    """
    spec = method_spec(method)
    if not spec.pretrained:
        return None, {}
    if path is None:
        raise config.ConfigError(
            f"finetune.pretrained: method '{method}' fine-tunes a pre-trained model; pass --pretrained "
            f"<run>/checkpoint.pt from `prelar pretrain` (or use --method dreamerv2)"
        )
    try:
        ckpt = checkpoint.load(path)
    except ValueError as err:
        raise config.ConfigError(f"finetune.pretrained: {err}") from None
    cfg = dict(ckpt["model_config"])  # (a key added since it was written counts with its default)
    wrong = spec.mismatch(cfg)
    if wrong:
        expects = dict(spec.expects)
        raise config.ConfigError(
            f"finetune.pretrained: {path} has model switches {wrong}, but method '{method}' needs "
            f"{expects}; fine-tune it with --method {', '.join(methods.fitting(cfg)) or 'none'} or pass a "
            f"checkpoint pre-trained with {expects}"
        )
    try:
        model_cfg = config.Model(**cfg)
    except (ValueError, TypeError) as err:
        raise _unfit(path, err) from None
    dims = model_cfg.latent_action_dim
    if model_cfg.true_actions and dims != ACTION_DIM:
        raise config.ConfigError(
            f"finetune.pretrained: {path} was pre-trained with true actions of {dims} dims; the "
            f"environment's have {ACTION_DIM}: pre-train it on clips of this environment's actions"
        )
    if model_cfg.latent_actions and dims != model_params.latent_action_dim:
        raise config.ConfigError(
            f"model.latent_action_dim: {path} was pre-trained with latent actions of {dims} dims, params say "
            f"{model_params.latent_action_dim}; set model.latent_action_dim: {dims} (the action encoder's "
            f"output) or pre-train again"
        )
    try:
        model = WorldModel(model_cfg)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as err:
        raise _unfit(path, err) from None
    return model, ckpt


def _unfit(path: str | Path, err: Exception) -> config.ConfigError:
    return config.ConfigError(
        f"finetune.pretrained: {path} does not fit the world model of this code ({err}); pre-train it again "
        "with `prelar pretrain`"
    )


class FinetuneModel(nn.Module):
    """World model + action encoder + reward heads + intrinsic bonus: the model of Eq. 10, loss of Eq. 11,
    with its Adam optimiser and `update` (one step of Eq. 11). Online fine-tuning (`prelar.agent.finetune`)
    and offline transfer (`prelar.evaluate.transfer`) both train it through `update`."""

    def __init__(self, method: str, params: config.Params, pretrained: WorldModel | None):
        super().__init__()
        spec = method_spec(method)
        cfg = params.finetune
        self.method, self.spec, self.cfg = method, spec, cfg
        if spec.stacked:
            self.world = StackedWorldModel(pretrained, ACTION_DIM)
            frozen = [pretrained.encoder, pretrained.rssm]
        elif spec.action_encoder:
            pretrained.inverse_dynamics = None  # Eq. 10: dropped; the action encoder takes its place
            self.world = pretrained
            frozen = [pretrained.encoder, pretrained.rssm]
        else:  # real actions straight into an action-conditional RSSM
            model_cfg = (pretrained.cfg if pretrained is not None else params.model).model_copy(
                update={
                    "action_free": False,
                    "latent_action_dim": ACTION_DIM,
                    "use_consistency": False,
                    "use_action_kl": False,
                }
            )
            self.world = WorldModel(model_cfg)
            self.world.inverse_dynamics = None
            frozen = []
            if pretrained is not None:  # everything, but naive fine-tuning's fresh action input layer
                fresh = [] if pretrained.cfg.true_actions else ["rssm.img_in_action.weight"]
                missing, unexpected = self.world.load_state_dict(pretrained.state_dict(), strict=False)
                if unexpected or missing != fresh:
                    raise config.ConfigError(
                        f"finetune.pretrained: the checkpoint does not fit an action-"
                        f"conditional model of its sizes (missing {missing}, unexpected {unexpected}); "
                        f"pre-train again"
                    )
                frozen = [self.world.encoder, self.world.rssm]
        wm_cfg = self.world.cfg
        self.action_encoder = (
            ActionEncoder(
                ACTION_DIM, wm_cfg.latent_action_dim, cfg.action_encoder_units, cfg.action_encoder_layers
            )
            if spec.action_encoder
            else None
        )
        feat_dim = self.world.rssm.feat_dim
        self.reward_head = MLP(feat_dim, 1, cfg.reward_units, cfg.reward_layers)
        self.aux_reward_head = MLP(feat_dim, 1, cfg.reward_units, cfg.reward_layers) if spec.bonus else None
        if spec.bonus:
            source_dim = pretrained.rssm.feat_dim if spec.stacked else self.world.encoder.out_dim
            self.bonus = IntrinsicBonus(source_dim, cfg.bonus, seed=cfg.seed)
        else:
            self.bonus = None
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        trained = [p for n, p in self.named_parameters() if not n.startswith("world.action_free.decoder.")]
        self.frozen_params = [p for p in trained if id(p) in frozen_ids]
        self.trained_params = [p for p in trained if id(p) not in frozen_ids]
        # one Adam over both groups; `.to(device)` later keeps the parameters (moved in place), so it follows
        groups = [{"params": params} for params in (self.trained_params, self.frozen_params) if params]
        self.optimizer = torch.optim.Adam(groups, lr=cfg.model_lr, eps=cfg.model_eps)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # world-model updates taken

    @property
    def feat_dim(self) -> int:
        return self.world.rssm.feat_dim

    @property
    def device(self) -> torch.device:
        return self.updates.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """`finetune.precision` on the model's device (`prelar.device.autocast`)."""
        return device.autocast(self.device, self.cfg.precision)

    def latent_action(self, action: torch.Tensor) -> torch.Tensor:
        """Real actions [.., A] → what the RSSM's action slot receives ([.., L] or the actions themselves)."""
        return action if self.action_encoder is None else self.action_encoder(action)

    def imagine_step(self, state: State, action: torch.Tensor) -> State:
        return self.world.imagine_step(state, self.latent_action(action))

    def features(self, state: State) -> torch.Tensor:
        return self.world.features(state)

    def task_reward(self, features: torch.Tensor) -> torch.Tensor:
        """The reward behaviour learning maximises: r + β·r_int (auxiliary head) with a bonus, else r."""
        head = self.aux_reward_head if self.aux_reward_head is not None else self.reward_head
        return head(features).squeeze(-1)

    def observe_step(
        self, frame: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state: State | None
    ) -> State:
        """One filtering step while acting: frame uint8 [N, 3, 64, 64], a_{t-1} [N, A], is_first [N]."""
        embed = self.world.encode(preprocess(frame[:, None]))  # [N, 1, E]
        post, _ = self.world.observe(embed, self.latent_action(action[:, None]), is_first[:, None], state)
        return _index_time(post, 0)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], State]:
        """Eq. 11 on replayed segments: image NLL + reward NLL + auxiliary reward NLL + β·dynamics KL.

        batch: frames uint8 [B, T, 3, 64, 64], actions [B, T, A] (a_{t-1}), rewards [B, T], is_first [B, T].
        Returns (loss, metrics, posterior states [B, T, ..] for imagination). Reward NLLs are unit-variance
        Gaussians without the constant (DreamerV2's MSE heads).
        """
        images = preprocess(batch["frames"])  # [B, T, 3, 64, 64]
        embed = self.world.encode(images)  # [B, T, E]
        post, prior = self.world.observe(embed, self.latent_action(batch["actions"]), batch["is_first"])
        feat = self.world.features(post)  # [B, T, F]
        recon = self.world.decode(feat)  # [B, T, 3, 64, 64]
        image_nll = -losses.image_log_likelihood(recon, images).mean()
        wm_cfg = self.world.cfg
        kl_loss, kl_value = losses.dynamics_kl(
            post["logits"], prior["logits"], wm_cfg.kl_balance, wm_cfg.kl_free
        )
        rewards = batch["rewards"].float()  # [B, T]
        reward_nll = 0.5 * (self.reward_head(feat).squeeze(-1).float() - rewards).pow(2).mean()
        total = image_nll + wm_cfg.beta * kl_loss + reward_nll
        metrics = {"image_nll": image_nll, "kl_dyn": kl_value.mean(), "reward_nll": reward_nll}
        if self.bonus is not None:
            source = self.world.features(self.world.action_free_state(post)) if self.spec.stacked else embed
            bonus = self.bonus(source.detach())  # [B, T'] with T' = T - window + 1
            T2 = bonus.shape[1]
            aux_target = rewards[:, :T2] + self.cfg.bonus.beta * bonus  # [B, T']
            aux_nll = (
                0.5 * (self.aux_reward_head(feat[:, :T2]).squeeze(-1).float() - aux_target).pow(2).mean()
            )
            total = total + aux_nll
            metrics.update(aux_reward_nll=aux_nll, intrinsic_bonus=bonus.mean())
        metrics["total"] = total
        start = {k: post[k] for k in ("deter", "stoch", "logits")}
        return total, {k: float(v.detach()) for k, v in metrics.items()}, start

    def update(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, float], State]:
        """One world-model step (Eq. 11) on replayed segments (`Replay.sample`'s numpy batch), counted in
        `updates`: (metrics with the gradient norm before clipping, posterior states [B, T, ..] for
        imagination). The `frozen` group learns at lr 0 for the first `freeze_updates` updates."""
        cfg = self.cfg
        data = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        if self.frozen_params:
            frozen = int(self.updates) < cfg.freeze_updates
            self.optimizer.param_groups[1]["lr"] = 0.0 if frozen else cfg.model_lr
        self.train()
        with self.autocast():
            loss, metrics, start = self.loss(data)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, cfg.model_grad_clip))
        self.optimizer.step()
        self.updates.add_(1)
        return metrics, start


def _index_time(state: State, t: int) -> State:
    """state [N, T, ..] (possibly nested, as the stacked model's) → state [N, ..] at time t."""
    return {k: _index_time(v, t) if isinstance(v, dict) else v[:, t] for k, v in state.items()}
