"""Recurrent state-space model (DreamerV2) conditioned on a latent action: PreLAR Eq. 2.

    deterministic    h_t = GRU(h_{t-1}, MLP([s_{t-1}, ã_{t-1}]))           (LayerNorm'd GRU, DreamerV2)
    representation   q(s_t | s_{t-1}, ã_{t-1}, o_t) = Cat(MLP([h_t, e_t]))    e_t = encoder(o_t)
    transition       p(ŝ_t | s_{t-1}, ã_{t-1})      = Cat(MLP(h_t))

The stochastic state is `stoch` categorical variables of `classes` classes each, sampled with
straight-through gradients (no uniform mix, as DreamerV2). With `action_dim == 0` the model is APV's
action-free RSSM (APV Eq. 1): no action input at all.

A state is a dict {deter [.., D], stoch [.., S*C] (one-hot, flattened), logits [.., S, C]}.

Hot path: `observe` runs a Python loop over T. Everything that does not depend on the recurrence is
taken out of it: the action's share of the input layer and the embedding's share of the posterior layer
are computed for all t in one matrix product each (the concatenated layers are split into per-input
linear maps, which is the same function), the Gumbel noise for sampling is drawn once, and the prior
head runs on all deterministic states after the loop.

Shape legend: B batch, T time, D deter, H hidden, S stoch, C classes, E embedding, A action.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

State = dict[str, torch.Tensor]


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU: one linear map of [x, h], LayerNorm, update gate biased by -1."""

    def __init__(self, inp: int, size: int):
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size, eps=1e-3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))  # [N, 3D]
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return torch.lerp(h, cand.to(h.dtype), update.to(h.dtype))  # update·cand + (1 − update)·h


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Gumbel(0, 1) noise: argmax(logits + g) is a sample of Categorical(logits)."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, deter: int, hidden: int, stoch: int, classes: int):
        super().__init__()
        self.deter, self.stoch, self.classes, self.action_dim = deter, stoch, classes, action_dim
        flat = stoch * classes
        self.img_in_stoch = nn.Linear(flat, hidden)
        self.img_in_action = nn.Linear(action_dim, hidden, bias=False) if action_dim else None
        self.gru = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Linear(deter, hidden)  # transition (prior) head
        self.img_dist = nn.Linear(hidden, flat)
        self.obs_out_deter = nn.Linear(deter, hidden, bias=False)  # representation (posterior) head
        self.obs_out_embed = nn.Linear(embed_dim, hidden)
        self.obs_dist = nn.Linear(hidden, flat)

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch * self.classes

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> State:
        return {
            "deter": torch.zeros(batch, self.deter, device=device, dtype=dtype),
            "stoch": torch.zeros(batch, self.stoch * self.classes, device=device, dtype=dtype),
            "logits": torch.zeros(batch, self.stoch, self.classes, device=device, dtype=dtype),
        }

    @staticmethod
    def features(state: State) -> torch.Tensor:
        return torch.cat([state["deter"], state["stoch"].to(state["deter"].dtype)], -1)  # [.., D+S*C]

    def _sample(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Straight-through one-hot sample (Gumbel-max with the given noise): [.., S, C] → [.., S*C]."""
        logits = logits.float()
        index = (logits + noise).argmax(-1)
        onehot = F.one_hot(index, self.classes).to(logits.dtype)
        probs = logits.softmax(-1)
        return (onehot + probs - probs.detach()).flatten(-2)

    def _prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        x = self.img_dist(F.elu(self.img_out(deter)))
        return x.unflatten(-1, (self.stoch, self.classes))  # [.., S, C]

    def _img_in(self, stoch: torch.Tensor, action_proj: torch.Tensor | None) -> torch.Tensor:
        x = self.img_in_stoch(stoch)
        return F.elu(x if action_proj is None else x + action_proj)  # [N, H]

    def _project_action(self, action: torch.Tensor | None) -> torch.Tensor | None:
        if self.img_in_action is None:
            return None
        if action is None:
            raise ValueError("this RSSM is action-conditional: pass a latent action")
        return self.img_in_action(action)

    def observe(
        self,
        embed: torch.Tensor,
        action: torch.Tensor | None,
        is_first: torch.Tensor | None = None,
        state: State | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[State, State]:
        """Posterior and prior states for a sequence.

        embed [B, T, E]; action [B, T, A] where action[:, t] is ã_{t-1}, the action that led into step t
        (None for the action-free RSSM); is_first [B, T] resets the state (and zeroes the action) where
        true; state: the state before t=0 (default zeros). Returns (post, prior) with [B, T, ..] leaves.
        """
        B, T = embed.shape[:2]
        if state is None:
            state = self.initial_state(B, embed.device)
        keep = None if is_first is None else (1.0 - is_first.float()).unsqueeze(-1)  # [B, T, 1]
        if keep is not None and action is not None:
            action = action * keep.to(action.dtype)
        action_proj = self._project_action(action)  # [B, T, H] or None
        embed_proj = self.obs_out_embed(embed)  # [B, T, H]
        noise = gumbel_noise((B, T, self.stoch, self.classes), generator, embed.device)
        h, s = state["deter"], state["stoch"]
        deters, stochs, logits = [], [], []
        for t in range(T):
            if keep is not None:
                h, s = h * keep[:, t].to(h.dtype), s * keep[:, t].to(s.dtype)
            x = self._img_in(s, None if action_proj is None else action_proj[:, t])  # [B, H]
            h = self.gru(x, h)  # [B, D]
            lg = self.obs_dist(F.elu(self.obs_out_deter(h) + embed_proj[:, t]))  # [B, S*C]
            lg = lg.unflatten(-1, (self.stoch, self.classes))  # [B, S, C]
            s = self._sample(lg, noise[:, t])  # [B, S*C]
            deters.append(h), stochs.append(s), logits.append(lg)
        deter = torch.stack(deters, 1)  # [B, T, D]
        post = {"deter": deter, "stoch": torch.stack(stochs, 1), "logits": torch.stack(logits, 1)}
        prior_logits = self._prior_logits(deter)  # [B, T, S, C]
        prior_noise = gumbel_noise(prior_logits.shape, generator, embed.device)
        prior = {"deter": deter, "stoch": self._sample(prior_logits, prior_noise), "logits": prior_logits}
        return post, prior

    def imagine_step(
        self,
        state: State,
        action: torch.Tensor | None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> State:
        """The transition p(ŝ_t | s_{t-1}, ã_{t-1}) for one step: state [N, ..], action [N, A] → prior.

        The next stochastic state is a straight-through sample, or the mode when `sample` is False.
        """
        h = self.gru(self._img_in(state["stoch"], self._project_action(action)), state["deter"])  # [N, D]
        logits = self._prior_logits(h)  # [N, S, C]
        if sample:
            noise = gumbel_noise(logits.shape, generator, h.device)
        else:
            noise = torch.zeros_like(logits, dtype=torch.float32)
        return {"deter": h, "stoch": self._sample(logits, noise), "logits": logits}

    def imagine(
        self,
        state: State,
        actions: torch.Tensor | None,
        horizon: int,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> State:
        """Roll the transition `horizon` steps: state [N, ..], actions [N, horizon, A] → [N, horizon, ..]."""
        steps = []
        for t in range(horizon):
            state = self.imagine_step(state, None if actions is None else actions[:, t], generator, sample)
            steps.append(state)
        return {k: torch.stack([s[k] for s in steps], 1) for k in steps[0]}
