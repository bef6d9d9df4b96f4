"""Tests of prelar/world_model.py on tiny models and random uint8 videos."""

import itertools
import time

import pytest
import torch

from prelar import losses
from prelar.config import Model
from prelar.world_model import StackedWorldModel, WorldModel

TINY = dict(cnn_width=4, deter=16, hidden=16, stoch=4, classes=4, latent_action_dim=6)
METRICS = {"total", "image_nll", "image_mse", "kl_dyn", "kl_dyn_loss", "kl_action", "consistency",
           "consistency_agreement", "prior_entropy", "post_entropy"}


def _frames(b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, 64, 64), generator=g, dtype=torch.uint8)


def _model(**over):
    torch.manual_seed(0)
    return WorldModel(Model(**{**TINY, **over}))


def test_loss_is_finite_reports_every_term_and_is_eq9():
    wm = _model(beta=0.7, beta_a=0.3, beta_r=2.0)
    loss, metrics, outputs = wm.loss(_frames(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert METRICS | {"latent_action_std", "latent_action_mean_abs"} <= set(metrics)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    m = {k: v.item() for k, v in metrics.items()}
    assert m["total"] == pytest.approx(m["image_nll"] + 0.7 * m["kl_dyn_loss"] + 0.3 * m["kl_action"]
                                       + 2.0 * m["consistency"], rel=1e-5)
    assert m["kl_action"] > 0 and m["consistency"] > 0
    assert outputs["post"]["deter"].shape == (3, 5, 16)
    assert outputs["latent_action_mean"].shape == (3, 4, 6)
    assert outputs["latent_action"].shape == (3, 5, 6)
    assert outputs["latent_action"][:, 0].abs().sum() == 0  # zero action prepended at t = 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in wm.parameters() if p.grad is not None)


def test_a_given_beta_a_replaces_the_configured_weight():
    """The warm-up passes the action KL's weight per update: total = the same terms with that weight."""
    wm = _model(beta_a=1.0)
    _, paper, _ = wm.loss(_frames(), torch.Generator().manual_seed(0))
    _, warm, _ = wm.loss(_frames(), torch.Generator().manual_seed(0), beta_a=torch.tensor(0.25))
    assert warm["kl_action"].item() == paper["kl_action"].item() > 0
    difference = (paper["total"] - warm["total"]).item()
    assert difference == pytest.approx(0.75 * paper["kl_action"].item(), abs=5e-3)  # fp32 totals ~1e4


def test_loss_is_reproducible_with_a_generator():
    wm = _model()
    a = wm.loss(_frames(), torch.Generator().manual_seed(5))[0]
    b = wm.loss(_frames(), torch.Generator().manual_seed(5))[0]
    assert a.item() == b.item()


@pytest.mark.parametrize("action_free,use_action_kl,use_consistency",
                         list(itertools.product([False, True], [True, False], [True, False])))
def test_every_switch_combination_trains(action_free, use_action_kl, use_consistency):
    wm = _model(action_free=action_free, use_action_kl=use_action_kl, use_consistency=use_consistency)
    assert (wm.inverse_dynamics is None) == action_free
    loss, metrics, outputs = wm.loss(_frames(b=2, t=4))
    assert torch.isfinite(loss)
    loss.backward()
    assert wm.encoder.net[0].weight.grad.abs().sum() > 0
    if action_free:
        assert outputs["latent_action"] is None and "latent_action_std" not in metrics
    if action_free or not use_action_kl:
        assert metrics["kl_action"].item() == 0.0
    if action_free or not use_consistency:
        assert metrics["consistency"].item() == 0.0


@pytest.mark.parametrize("form", ["soft", "sign"])
def test_consistency_gradient_reaches_the_inverse_dynamics_encoder(form):
    wm = _model(consistency_form=form)
    _, _, outputs = wm.loss(_frames(b=4, t=5), torch.Generator().manual_seed(1))
    consistency, agreement = wm.consistency(outputs, torch.Generator().manual_seed(2))
    assert 0.0 <= agreement.item() <= 1.0
    params = list(wm.inverse_dynamics.parameters())
    grads = torch.autograd.grad(consistency, params, allow_unused=True)
    total = sum(g.abs().sum().item() for g in grads if g is not None)
    if form == "soft":
        assert total > 0.0
        # it reaches the ResNet itself, not only the Gaussian head
        first_conv = params.index(wm.inverse_dynamics.encoder.net[0].weight)
        assert grads[first_conv] is not None and grads[first_conv].abs().sum() > 0
    else:
        assert total == 0.0  # the reference code's sign-vs-sign form trains nothing


def test_latent_action_is_deterministic_without_action_kl():
    frames = _frames()
    for use_action_kl, same in ((False, True), (True, False)):
        wm = _model(use_action_kl=use_action_kl)
        a = wm.loss(frames, torch.Generator().manual_seed(0))[2]
        b = wm.loss(frames, torch.Generator().manual_seed(1))[2]
        assert torch.equal(a["latent_action"], b["latent_action"]) == same
        if not use_action_kl:
            torch.testing.assert_close(a["latent_action"][:, 1:], a["latent_action_mean"])


def test_open_loop_and_latent_action_inference():
    wm = _model()
    frames = _frames(b=2, t=7)
    mean, std = wm.infer_latent_actions(frames)
    assert mean.shape == std.shape == (2, 6, 6)
    wm.train()
    action = wm.action_input(mean)  # [2, 7, 6]: step t gets ã_{t-1}
    pred = wm.open_loop(frames, 3, action, generator=torch.Generator().manual_seed(0), sample=False)
    assert pred.shape == (2, 4, 3, 64, 64) and pred.dtype == torch.uint8
    assert wm.training  # mode restored
    shuffled = wm.open_loop(frames, 3, wm.action_input(mean.flip(0) * 5), sample=False)
    assert shuffled.shape == pred.shape
    assert not torch.equal(shuffled, pred)  # the prediction depends on the latent actions
    with pytest.raises(ValueError, match="T-1"):
        wm.open_loop(frames, 3, mean)  # latent actions, not the RSSM's action input
    with pytest.raises(ValueError, match="context"):
        wm.open_loop(frames, 7, action)
    free = _model(action_free=True)
    assert free.open_loop(frames, 5, None).shape == (2, 2, 3, 64, 64)
    with pytest.raises(ValueError, match="action-free"):
        free.infer_latent_actions(frames)
    with pytest.raises(TypeError, match="uint8"):
        wm.loss(frames.float())


def test_bf16_autocast_on_cpu_is_finite():
    wm = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics, _ = wm.loss(_frames(b=2, t=4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in wm.parameters() if p.grad is not None)


def test_stacked_model_shapes_and_gradient_flow():
    af = _model(action_free=True)
    stacked = StackedWorldModel(af, action_dim=4)
    assert stacked.decoder is not af.decoder
    for a, b in zip(stacked.decoder.parameters(), af.decoder.parameters(), strict=True):
        assert torch.equal(a, b)  # initialised with the pre-trained decoder
    frames = _frames(b=2, t=5)
    images = frames.float() / 255 - 0.5
    embed = stacked.encode(images)
    actions = torch.randn(2, 5, 4)
    post, prior = stacked.observe(embed, actions)
    assert post["deter"].shape == (2, 5, 16) and post["af_deter"].shape == (2, 5, 16)
    af_post = stacked.action_free_state(post)
    assert set(af_post) == {"deter", "stoch", "logits"} and af.features(af_post).shape == (2, 5, 32)
    feat = stacked.features(post)
    recon = stacked.decode(feat)
    assert recon.shape == (2, 5, 3, 64, 64)
    kl_ac, _ = losses.dynamics_kl(post["logits"], prior["logits"])
    kl_af, _ = losses.dynamics_kl(post["af_logits"], prior["af_logits"])
    loss = -losses.image_log_likelihood(recon, images).mean() + kl_ac + kl_af
    loss.backward()
    for module in (stacked.rssm, stacked.decoder, af.rssm, af.encoder):
        assert sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None) > 0
    last = {k: v[:, -1] for k, v in post.items()}
    nxt = stacked.imagine_step(last, torch.randn(2, 4))
    assert nxt["deter"].shape == (2, 16)
    # observing on from a carried state continues the sequence
    post2, _ = stacked.observe(embed[:, :1], actions[:, :1], state=last)
    assert post2["af_deter"].shape == (2, 1, 16)
    init = stacked.initial_state(3)
    assert init["af_stoch"].shape == (3, 16) and init["stoch"].shape == (3, 16)
    with pytest.raises(ValueError, match="action-free"):
        StackedWorldModel(_model(), action_dim=4)


def test_paper_size_parameter_count():
    wm = WorldModel(Model(cnn_width=48, deter=1024, hidden=1024, stoch=32, classes=32, latent_action_dim=64))
    n = sum(p.numel() for p in wm.parameters())
    print(f"\nparameters at paper size: {n / 1e6:.2f}M "
          + ", ".join(f"{k} {sum(p.numel() for p in getattr(wm, k).parameters()) / 1e6:.2f}M"
                      for k in ("encoder", "rssm", "decoder", "inverse_dynamics")))
    assert 27e6 <= n <= 29e6  # paper: ~27.35M; the reference code: 28.7M


def test_one_training_step_is_timed():
    """A small-model step timing (the paper-size step is measured by scripts, not the suite)."""
    wm = _model()
    frames = _frames(b=4, t=8)
    start = time.perf_counter()
    loss, _, _ = wm.loss(frames)
    loss.backward()
    assert time.perf_counter() - start < 30.0


def test_true_actions_take_the_latent_actions_place_in_the_rssm():
    """model.true_actions: no inverse dynamics; the loss reads the given actions (the prior depends on
    them)."""
    wm = _model(true_actions=True, use_action_kl=False, use_consistency=False, latent_action_dim=4)
    assert wm.inverse_dynamics is None
    frames = _frames(b=2, t=4)
    actions = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"true actions \[B, T-1, A\] = \[2, 3, A\], got None"):
        wm.loss(frames)
    loss, metrics, outputs = wm.loss(frames, torch.Generator().manual_seed(0), actions=actions)
    assert torch.equal(outputs["latent_action"][:, 1:], actions)
    assert outputs["latent_action"][:, 0].abs().sum() == 0  # a zero action at t = 0, as for latent actions
    assert metrics["kl_action"].item() == 0.0 and metrics["consistency"].item() == 0.0
    other = wm.loss(frames, torch.Generator().manual_seed(0), actions=-actions)[1]
    assert other["kl_dyn"].item() != metrics["kl_dyn"].item()  # the prior reads the actions
    loss.backward()
    assert wm.rssm.img_in_action.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.true_actions=true"):
        wm.infer_latent_actions(frames)
