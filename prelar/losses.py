"""PreLAR's pre-training objective as pure functions (equation numbers: PreLAR main text).

Every function computes in float32 whatever the input dtype (safe under bf16 autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2.0 * math.pi)


def image_log_likelihood(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Image log loss of Eq. 4/5, ln p(o_t | s_t): a unit-variance Gaussian (DreamerV2) summed over pixels.

    mean, target [.., C, H, W] → [..]. Includes the constant −½·ln(2π) per pixel, so it is a true
    log-density; its gradient is that of −½·squared error.
    """
    sq = (target.float() - mean.float()).pow(2).flatten(-3).sum(-1)  # [..]
    return -0.5 * (sq + math.prod(target.shape[-3:]) * _LOG_2PI)


def categorical_kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(lhs) ‖ Cat(rhs)) for `S` independent categoricals: logits [.., S, C] → [..] (summed over S)."""
    lhs = lhs_logits.float().log_softmax(-1)
    rhs = rhs_logits.float().log_softmax(-1)
    return (lhs.exp() * (lhs - rhs)).sum((-2, -1))


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of `S` independent categoricals: logits [.., S, C] → [..] (summed over S)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum((-2, -1))


def dynamics_kl(
    post_logits: torch.Tensor, prior_logits: torch.Tensor, balance: float = 0.8, free: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamics KL loss of Eq. 5, KL[q(s_t | s_{t-1}, ã_{t-1}, o_t) ‖ p(ŝ_t | s_{t-1}, ã_{t-1})], with
    DreamerV2's KL balancing: balance·KL(sg(q) ‖ p) + (1 − balance)·KL(q ‖ sg(p)), each averaged over
    the batch and clipped below at `free` nats (DreamerV2's free_avg).

    logits [.., S, C] → (loss scalar, KL value [..]).
    """
    value = categorical_kl(post_logits, prior_logits)  # [..]
    train_prior = categorical_kl(post_logits.detach(), prior_logits).mean()
    train_post = categorical_kl(post_logits, prior_logits.detach()).mean()
    return balance * free_nats(train_prior, free) + (1.0 - balance) * free_nats(train_post, free), value


def free_nats(kl: torch.Tensor, free: float) -> torch.Tensor:
    """A KL term clipped below at `free` nats (DreamerV2): below it, the term has no gradient."""
    return torch.clamp(kl, min=free) if free > 0 else kl


def gaussian_kl(
    mean1: torch.Tensor, std1: torch.Tensor, mean2: torch.Tensor, std2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, std1²) ‖ N(mean2, std2²)) of diagonal Gaussians, summed over the last dim.

    [.., A] → [..].
    """
    mean1, std1, mean2, std2 = mean1.float(), std1.float(), mean2.float(), std2.float()
    var_ratio = (std1 / std2).pow(2)
    return 0.5 * (var_ratio + ((mean1 - mean2) / std2).pow(2) - 1.0 - var_ratio.log()).sum(-1)


def action_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Action KL loss of Eq. 5, KL[q(ã_t | o_t, o_{t+1}) ‖ N(0, I)], summed over the latent dims.

    mean, std [.., A] → [..]. The prior is exactly N(0, I) (the reference code's is N(0, 1.245²)).
    """
    mean, std = mean.float(), std.float()
    return 0.5 * (std.pow(2) + mean.pow(2) - 1.0 - 2.0 * std.log()).sum(-1)


def consistency_loss(
    action_dist: torch.Tensor, state_dist: torch.Tensor, form: str = "soft", temperature: float = 1.0
) -> torch.Tensor:
    """Action-state consistency loss L^r of Eq. 6–8.

    action_dist [N]: Δã_i, the distance (KL) between the two latent-action posteriors of pair i;
    state_dist [N]: Δŝ_i, the distance (KL) between the two one-step priors imagined from the same s_t
    with those two latent actions. Eq. 7 asks the orderings of {Δã_i} and {Δŝ_i} to agree; like Eq. 8
    this compares, for every pair (i, j), the sign of Δã_i − Δã_j with the sign of Δŝ_i − Δŝ_j, the
    state side detached (a target, as in the reference code).

    form="soft": a logistic (RankNet) surrogate, mean over pairs with Δŝ_i ≠ Δŝ_j of
        softplus(−sign(Δŝ_i − Δŝ_j) · (Δã_i − Δã_j) / temperature):
        ln 2 at Δã ties, → 0 when the orderings agree, growing linearly when they disagree; its gradient
        reaches the action distances (hence the inverse dynamics encoder) and does not vanish on
        wrongly ordered pairs.
    form="sign": Eq. 8 as the reference code computes it, mean((sign(ΔΔã) − sign(ΔΔŝ))²) over all N²
        pairs: piecewise constant, so its gradient is zero everywhere (kept only to reproduce it).
    """
    da = action_dist.float()[:, None] - action_dist.float()[None, :]  # [N, N]
    target = torch.sign(state_dist.detach().float()[:, None] - state_dist.detach().float()[None, :])  # [N, N]
    if form == "sign":
        return F.mse_loss(torch.sign(da), target)
    if form != "soft":
        raise ValueError(f"unknown consistency form '{form}': use 'soft' or 'sign' (model.consistency_form)")
    mask = target != 0
    pair_loss = F.softplus(-target * da / temperature)  # [N, N]
    return (pair_loss * mask).sum() / mask.sum().clamp(min=1)


def action_kl_loss(mean: torch.Tensor, std: torch.Tensor, free: float = 0.0) -> torch.Tensor:
    """The action KL term of Eq. 5 as optimised: `action_kl` averaged over the batch and time steps, clipped
    below at `free` nats (`model.action_kl_free`; 0, the paper's objective, leaves it unchanged). Free nats
    on the action KL are not in the paper: they let the latent action carry `free` nats without cost."""
    return free_nats(action_kl(mean, std).mean(), free)


def warmup_weight(weight: float, step: int, warmup: int) -> float:
    """A loss weight annealed in linearly: `weight` · min(1, step / warmup), the weight of update `step + 1`
    (KL annealing, Bowman et al. 2016; `model.beta_a_warmup` on the action KL, not in the paper). warmup 0:
    `weight` from the first update (the paper's objective)."""
    return weight if warmup <= 0 else weight * min(1.0, step / warmup)


def pretrain_loss(
    image_nll: torch.Tensor,
    kl_dyn: torch.Tensor,
    kl_action: torch.Tensor,
    consistency: torch.Tensor,
    beta: float,
    beta_a: float | torch.Tensor,
    beta_r: float,
) -> torch.Tensor:
    """Eq. 9: L^pre-train = L^like + β_r·L^r, with L^like (Eq. 5) = image NLL + β·KL_dyn + β_a·KL_action."""
    return image_nll + beta * kl_dyn + beta_a * kl_action + beta_r * consistency
