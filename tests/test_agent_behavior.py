"""DreamerV2 actor-critic: λ-returns (Eq. 3), truncated-normal actor, losses (Eq. 2, 4), dynamics backprop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from prelar import config
from prelar.agent.behavior import ActorCritic, TruncatedNormal, actor_loss, critic_loss, lambda_return


def _lambda_return_by_definition(r, v, gamma, lam, bootstrap):
    """Eq. 3 as an average of n-step returns: V^λ_t = (1-λ) Σ_n λ^{n-1} G^n_t + λ^{H-t-1} G^{H-t}_t."""
    H = len(r)
    values = np.append(v, bootstrap)

    def g(t, n):  # n-step return from t, bootstrapped with v_{t+n}
        return sum(gamma**i * r[t + i] for i in range(n)) + gamma**n * values[t + n]

    out = []
    for t in range(H):
        m = H - t
        out.append((1 - lam) * sum(lam ** (n - 1) * g(t, n) for n in range(1, m)) + lam ** (m - 1) * g(t, m))
    return np.array(out)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_return_matches_the_n_step_definition(lam):
    rng = np.random.default_rng(0)
    H, gamma = 6, 0.9
    r, v, boot = rng.normal(size=H), rng.normal(size=H), rng.normal()
    got = lambda_return(
        torch.tensor(r)[:, None],
        torch.tensor(v)[:, None],
        torch.full((H, 1), gamma, dtype=torch.float64),
        torch.tensor([boot], dtype=torch.float64),
        lam,
    )[:, 0].numpy()
    np.testing.assert_allclose(got, _lambda_return_by_definition(r, v, gamma, lam, boot), rtol=1e-10)
    if lam == 0.0:
        np.testing.assert_allclose(got, r + gamma * np.append(v[1:], boot))


def test_truncated_normal_samples_entropy_and_gradient():
    loc = torch.tensor([[0.0, 0.9, -0.5]], requires_grad=True)
    scale = torch.tensor([[0.3, 0.5, 1.2]], requires_grad=True)
    dist = TruncatedNormal(loc.expand(20000, 3), scale.expand(20000, 3))
    x = dist.rsample(torch.Generator().manual_seed(0))
    assert x.abs().max() < 1.0
    ref = stats.truncnorm(
        (-1 - loc.detach().numpy()) / scale.detach().numpy(),
        (1 - loc.detach().numpy()) / scale.detach().numpy(),
        loc=loc.detach().numpy(),
        scale=scale.detach().numpy(),
    )
    np.testing.assert_allclose(x.mean(0).detach().numpy(), ref.mean()[0], atol=0.02)
    np.testing.assert_allclose(dist.entropy()[0].item(), ref.entropy().sum(), rtol=1e-4)
    x.sum().backward()
    assert loc.grad.abs().min() > 0 and scale.grad.abs().min() > 0  # reparameterised
    assert torch.equal(TruncatedNormal(torch.tensor([0.3]), torch.tensor([1.0])).mode(), torch.tensor([0.3]))


def test_losses_weight_and_stop_gradient():
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    target = torch.tensor([3.0, 2.0], requires_grad=True)
    loss = critic_loss(value, target, torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(0.5 * 0.5 * 4)
    loss.backward()
    assert target.grad is None and value.grad.tolist() == [-1.0, 0.0]
    a = actor_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]), eta=0.5)
    assert a.item() == pytest.approx(-(1 + 1 + 3 + 1) / 2)


class _PointMass(nn.Module):
    """A differentiable toy 'world model': x_{t+1} = x_t + w·a_t, reward = x, features = [x, 1]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.2))

    def step(self, state, action):
        return {"x": state["x"] + self.w * action[:, :1]}

    @staticmethod
    def features(state):
        return torch.cat([state["x"], torch.ones_like(state["x"])], -1)


def test_actor_learns_through_the_dynamics_and_the_world_model_is_untouched():
    torch.manual_seed(0)
    cfg = config.Behavior(horizon=5, layers=1, units=16, actor_lr=1e-2, critic_lr=1e-2, target_update_every=3)
    agent = ActorCritic(feature_dim=2, action_dim=2, cfg=cfg)
    model = _PointMass()
    start = {"x": torch.zeros(64, 1)}

    def mean_action():
        return agent.actor(model.features(start)).mode()[:, 0].mean().item()

    before = mean_action()
    for i in range(41):
        metrics = agent.update(start, model.step, model.features, lambda f: f[..., 0], model)
        if i == 0:
            critic_after_first = [p.clone() for p in agent.critic.parameters()]
    assert mean_action() > before + 0.3  # pushes x up: reward = x
    assert model.w.grad is None and model.w.requires_grad  # gradients flowed through, not into, the model
    assert set(metrics) >= {"actor_loss", "critic_loss", "actor_entropy"}
    # the slow critic was copied at update 39 (every 3rd), not at update 40
    assert int(agent.updates) == 41
    for s, d in zip(agent.critic.parameters(), agent.target_critic.parameters(), strict=True):
        assert not torch.equal(s, d)
    assert not all(
        torch.equal(a, b) for a, b in zip(critic_after_first, agent.critic.parameters(), strict=True)
    )
