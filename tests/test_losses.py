"""Tests of prelar/losses.py against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch import distributions as D

from prelar import losses


def test_action_kl_matches_torch_distributions_and_is_zero_at_standard_normal():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 7, 64, generator=g)
    std = torch.rand(5, 7, 64, generator=g) + 0.1
    expected = D.kl_divergence(D.Normal(mean, std), D.Normal(0.0, 1.0)).sum(-1)
    got = losses.action_kl(mean, std)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, expected)
    # closed form for one dimension: ½(σ² + μ² − 1 − ln σ²)
    one = losses.action_kl(torch.tensor([[0.5]]), torch.tensor([[2.0]]))
    assert one.item() == pytest.approx(0.5 * (4.0 + 0.25 - 1.0 - math.log(4.0)))
    assert losses.action_kl(torch.zeros(3, 64), torch.ones(3, 64)).abs().max().item() == 0.0


def test_gaussian_and_categorical_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(2, 4, 8, generator=g)
    s1, s2 = torch.rand(2, 4, 8, generator=g) + 0.2
    torch.testing.assert_close(losses.gaussian_kl(m1, s1, m2, s2),
                               D.kl_divergence(D.Normal(m1, s1), D.Normal(m2, s2)).sum(-1))
    a, b = torch.randn(2, 3, 5, 6, generator=g)  # [.., S=5, C=6]
    expected = D.kl_divergence(D.Categorical(logits=a), D.Categorical(logits=b)).sum(-1)
    torch.testing.assert_close(losses.categorical_kl(a, b), expected)
    torch.testing.assert_close(losses.categorical_entropy(a), D.Categorical(logits=a).entropy().sum(-1))


def test_image_log_likelihood_is_unit_variance_gaussian_summed_over_pixels():
    g = torch.Generator().manual_seed(2)
    mean, target = torch.rand(2, 3, 3, 8, 8, generator=g) - 0.5
    expected = D.Normal(mean, 1.0).log_prob(target).sum((-3, -2, -1))
    torch.testing.assert_close(losses.image_log_likelihood(mean, target), expected)


def test_dynamics_kl_balancing_splits_the_gradient_and_free_nats_clip():
    g = torch.Generator().manual_seed(3)
    post = torch.randn(4, 6, 5, 7, generator=g, requires_grad=True)
    prior = torch.randn(4, 6, 5, 7, generator=g, requires_grad=True)
    loss, value = losses.dynamics_kl(post, prior, balance=0.8, free=0.0)
    # the value is the plain KL, and so is the loss (both sides have the same value)
    torch.testing.assert_close(loss, value.mean())
    g_post, g_prior = torch.autograd.grad(loss, [post, prior])
    f_post, f_prior = torch.autograd.grad(losses.categorical_kl(post, prior).mean(), [post, prior])
    torch.testing.assert_close(g_prior, 0.8 * f_prior)  # the prior learns 4x faster than the posterior
    torch.testing.assert_close(g_post, 0.2 * f_post)
    # free nats: below the threshold the loss is the constant `free` and trains nothing
    big = value.mean().item() + 1.0
    loss_free, _ = losses.dynamics_kl(post, prior, balance=0.8, free=big)
    assert loss_free.item() == pytest.approx(big)
    grads = torch.autograd.grad(loss_free, [post, prior], allow_unused=True)
    assert all(gr is None or gr.abs().max() == 0 for gr in grads)


def _ordered(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.rand(n, generator=g) * 5
    return state


@pytest.mark.parametrize("form", ["soft", "sign"])
def test_consistency_loss_is_lower_for_agreeing_orderings(form):
    state = _ordered(32)
    agreeing = 2.0 * state + 1.0  # same ordering
    reversed_ = -state  # reversed ordering
    low = losses.consistency_loss(agreeing, state, form=form)
    high = losses.consistency_loss(reversed_, state, form=form)
    assert low.item() < high.item()
    if form == "sign":
        assert low.item() == 0.0
        # the reference value: mean over all N² pairs of (sign ΔΔã − sign ΔΔŝ)², with the diagonal 0
        assert high.item() == pytest.approx(4.0 * (32 * 31) / 32**2)


def test_consistency_soft_form_passes_gradient_and_sign_form_does_not():
    state = _ordered(16, seed=1)
    action = torch.rand(16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (g_soft,) = torch.autograd.grad(losses.consistency_loss(action, state, "soft", 1.0), [action])
    (g_sign,) = torch.autograd.grad(losses.consistency_loss(action, state, "sign"), [action])
    assert g_soft.abs().sum() > 1e-3
    assert g_sign.abs().sum() == 0.0
    # a gradient step on the soft form improves the rank agreement
    before = losses.consistency_loss(action, state, "sign").item()
    stepped = (action - 5.0 * g_soft).detach()
    assert losses.consistency_loss(stepped, state, "sign").item() < before


def test_consistency_ignores_state_ties_and_rejects_unknown_form():
    state = torch.ones(8)  # every pair tied: no ordering to match
    action = torch.randn(8, requires_grad=True)
    assert losses.consistency_loss(action, state, "soft").item() == 0.0
    with pytest.raises(ValueError, match="consistency_form"):
        losses.consistency_loss(action, state, "rank")


def test_pretrain_loss_is_eq9():
    terms = [torch.tensor(v) for v in (10.0, 2.0, 3.0, 0.5)]
    assert losses.pretrain_loss(*terms, beta=1.0, beta_a=0.5, beta_r=2.0).item() == pytest.approx(
        10.0 + 2.0 + 1.5 + 1.0)


def test_free_nats_on_the_action_kl_stop_its_gradient_below_the_threshold():
    mean = torch.full((4, 3, 8), 0.1, requires_grad=True)
    std = torch.ones(4, 3, 8)
    kl = losses.action_kl(mean, std).mean()  # 8 * 0.5 * 0.01 = 0.04 nats
    assert losses.action_kl_loss(mean, std).item() == pytest.approx(kl.item())  # 0: the paper's objective
    clipped = losses.action_kl_loss(mean, std, free=1.0)
    assert clipped.item() == 1.0
    clipped.backward()
    assert mean.grad.abs().sum() == 0  # below the free nats: no pressure towards the prior
    mean.grad = None
    losses.action_kl_loss(mean, std, free=0.01).backward()  # above them: the KL's own gradient
    assert mean.grad.abs().sum() > 0


def test_warmup_weight_rises_linearly_then_holds():
    assert [losses.warmup_weight(2.0, step, 100) for step in (0, 25, 100, 500)] == [0.0, 0.5, 2.0, 2.0]
    assert losses.warmup_weight(2.0, 0, 0) == 2.0  # no warm-up: the paper's weight from the first update
