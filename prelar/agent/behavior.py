"""Behaviour learning in imagination: DreamerV2's actor-critic (PreLAR supplementary Sec. 1, Eq. 1–4).

From every posterior state of a replayed batch, the actor imagines `horizon` steps through the world
model's transition. The critic regresses the λ-return of the imagined rewards (Eq. 2–3) against a slow
copy of itself; the actor maximises the λ-return by back-propagating through the dynamics (straight-
through gradients of the stochastic state) plus an entropy bonus (Eq. 4). Actions follow DreamerV2's
truncated normal on [-1, 1] (mean tanh, std 2·sigmoid(x/2) + min_std).

Shape legend: H horizon, N imagined trajectories (= B·T start states), F model features, A action dims.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from prelar import config, device
from prelar.nets.heads import MLP
from prelar.nets.rssm import State


def lambda_return(
    reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, bootstrap: torch.Tensor, lam: float
) -> torch.Tensor:
    """λ-return of supplementary Eq. 3, computed backwards in time.

    V_t = r_t + γ_t ((1-λ) v_{t+1} + λ V_{t+1}) for t < H, and V_H = v_H (`bootstrap`).
    reward, value, discount: [H, N] for steps 0..H-1 (value[t] = v(s_t)); bootstrap: [N] = v(s_H).
    Returns [H, N].
    """
    next_value = torch.cat([value[1:], bootstrap[None]], 0)  # [H, N]: v_{t+1}
    inputs = reward + discount * next_value * (1 - lam)  # [H, N]
    out = []
    last = bootstrap  # [N]
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lam * last
        out.append(last)
    return torch.stack(out[::-1], 0)  # [H, N]


def critic_loss(value: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Supplementary Eq. 2: mean of weight · ½ (v_ξ(s_t) − sg(V^λ_t))² over t < H and trajectories."""
    return (weight * 0.5 * (value - target.detach()) ** 2).mean()


def actor_loss(target: torch.Tensor, entropy: torch.Tensor, weight: torch.Tensor, eta: float) -> torch.Tensor:
    """Supplementary Eq. 4: −(V^λ_t + η H[a_t | s_t]), weighted and averaged.

    V^λ carries the dynamics gradient (it is a function of the actions through the world model).
    """
    return -(weight.detach() * (target + eta * entropy)).mean()


class TruncatedNormal:
    """Independent truncated normals on [low, high] with reparameterised samples (inverse-CDF sampling).

    Samples are clipped 1e-6 inside the bounds with a straight-through gradient, as in DreamerV2.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, low: float = -1.0, high: float = 1.0):
        self.loc, self.scale, self.low, self.high = loc, scale, low, high
        self._alpha = (low - loc) / scale
        self._beta = (high - loc) / scale
        self._cdf_a = torch.special.ndtr(self._alpha)
        self._z = torch.special.ndtr(self._beta) - self._cdf_a  # probability mass inside [low, high]

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.loc.shape, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        p = (self._cdf_a + u * self._z).clamp(1e-7, 1 - 1e-7)
        x = self.loc + self.scale * torch.special.ndtri(p)
        clipped = x.clamp(self.low + 1e-6, self.high - 1e-6)
        return x + (clipped - x).detach()

    def mode(self) -> torch.Tensor:
        return self.loc.clamp(self.low, self.high)

    def entropy(self) -> torch.Tensor:
        """Sum over action dimensions: log(√(2πe) σ Z) + (α φ(α) − β φ(β)) / (2Z)."""

        def phi(x: torch.Tensor) -> torch.Tensor:
            return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)

        a, b, z = self._alpha, self._beta, self._z.clamp_min(1e-8)
        ent = (
            0.5 * math.log(2 * math.pi * math.e)
            + torch.log(self.scale * z)
            + (a * phi(a) - b * phi(b)) / (2 * z)
        )
        return ent.sum(-1)


class Actor(nn.Module):
    """p_ψ(a_t | s_t): an MLP to the mean and std of a truncated normal per action dimension."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: config.Behavior):
        super().__init__()
        self.net = MLP(feature_dim, 2 * action_dim, cfg.units, cfg.layers)
        self.min_std = cfg.min_std

    def forward(self, features: torch.Tensor) -> TruncatedNormal:
        mean, std = self.net(features).float().chunk(2, -1)  # [..., A] each
        return TruncatedNormal(torch.tanh(mean), 2 * torch.sigmoid(std / 2) + self.min_std)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of `modules` need no gradient inside the block (gradients still flow *through* them)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def imagine(
    actor: Actor,
    start: State,
    horizon: int,
    step: Callable[[State, torch.Tensor], State],
    features: Callable[[State], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Roll the actor through `step` (the transition model) for `horizon` steps from each start state.

    start: states with leading shape [N]. Returns features [H+1, N, F] (index 0 = start), the actions
    [H, N, A] that led to states 1..H, and the actor's entropies [H, N] at states 0..H-1. The actor sees
    detached features (DreamerV2): its gradient reaches its parameters only through the dynamics.
    """
    state = start
    feats = [features(state)]
    actions, entropies = [], []
    for _ in range(horizon):
        policy = actor(feats[-1].detach())
        action = policy.rsample()  # [N, A]
        entropies.append(policy.entropy())
        actions.append(action)
        state = step(state, action)
        feats.append(features(state))
    return {
        "features": torch.stack(feats),
        "actions": torch.stack(actions),
        "entropy": torch.stack(entropies),
    }


class ActorCritic(nn.Module):
    """Actor, critic and slow target critic, with their optimisers (Adam, DreamerV2's eps and clipping)."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: config.Behavior):
        super().__init__()
        self.cfg = cfg
        self.actor = Actor(feature_dim, action_dim, cfg)
        self.critic = MLP(feature_dim, 1, cfg.units, cfg.layers)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.eps)

    def optimizers_state(self) -> dict[str, Any]:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optimizers_state(self, state: dict[str, Any]) -> None:
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])

    def update(
        self,
        start: State,
        step: Callable[[State, torch.Tensor], State],
        features: Callable[[State], torch.Tensor],
        reward: Callable[[torch.Tensor], torch.Tensor],
        world_model: nn.Module,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """One actor and one critic step from start states [N] (detached here); returns metrics and timings.

        `reward` maps features [..., F] to the predicted reward [...]; `world_model` (every module that
        `step`, `features` and `reward` use) is frozen for the duration: the actor's gradient flows
        through it without accumulating in its parameters. `autocast` wraps the forward passes.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        with frozen(world_model):
            with autocast():
                seq = imagine(
                    self.actor, {k: v.detach() for k, v in start.items()}, cfg.horizon, step, features
                )
                feats = seq["features"]  # [H+1, N, F]
                rew = reward(feats).float()  # [H+1, N]
                value = self.target_critic(feats).squeeze(-1).float()  # [H+1, N]
            discount = torch.full_like(rew, cfg.gamma)  # Meta-world has no terminal states
            weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]]), 0).detach()
            target = lambda_return(rew[:-1], value[:-1], discount[:-1], value[-1], cfg.lam)  # [H, N]
            # The action taken in state t (t = 0..H-2) is scored by the target of state t+1; the last
            # action leads to the bootstrap state, which has no target (DreamerV2's alignment).
            a_loss = actor_loss(target[1:], seq["entropy"][:-1], weight[:-2], cfg.entropy)
            device.synchronize(feats.device)
            t1 = time.perf_counter()
            self.actor_opt.zero_grad(set_to_none=True)
            a_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        self.actor_opt.step()

        with autocast():
            v = self.critic(feats[:-1].detach()).squeeze(-1).float()  # [H, N]
        c_loss = critic_loss(v, target, weight[:-1])
        self.critic_opt.zero_grad(set_to_none=True)
        c_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        self._update_target()
        device.synchronize(feats.device)
        t2 = time.perf_counter()
        return {
            "actor_loss": a_loss.item(),
            "critic_loss": c_loss.item(),
            "actor_entropy": seq["entropy"].mean().item(),
            "imagined_reward": rew.mean().item(),
            "critic_target": target.mean().item(),
            "time/imagine_s": t1 - t0,
            "time/actor_critic_s": t2 - t1,
        }

    @torch.no_grad()
    def _update_target(self) -> None:
        """Copy (or mix by `target_fraction`) the critic into the slow critic every `target_update_every`."""
        if int(self.updates) % self.cfg.target_update_every == 0:
            mix = 1.0 if int(self.updates) == 0 else self.cfg.target_fraction
            for s, d in zip(self.critic.parameters(), self.target_critic.parameters(), strict=True):
                d.mul_(1 - mix).add_(mix * s)
        self.updates.add_(1)
