"""Tests of prelar/nets: ResNets, RSSM, inverse dynamics encoder, heads."""

import pytest
import torch
from torch import nn

from prelar.nets import MLP, RSSM, InverseDynamics, ResNetDecoder, ResNetEncoder, diag_gaussian


def test_resnet_encoder_is_13_layers_down_to_4x4_and_decoder_mirrors_it():
    enc = ResNetEncoder(3, width=8)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 13  # input conv + 3 stages x 2 residual layers x 2 convs
    x = torch.rand(5, 3, 64, 64) - 0.5
    e = enc(x)
    assert e.shape == (5, 4 * 8 * 4 * 4) == (5, enc.out_dim)
    dec = ResNetDecoder(20, width=8)
    y = dec(torch.randn(5, 20))
    assert y.shape == (5, 3, 64, 64)
    with pytest.raises(ValueError, match="64x64"):
        enc(torch.rand(2, 3, 32, 32))


def test_resnet_without_norm_has_no_batchnorm():
    enc = ResNetEncoder(6, width=4, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    assert enc(torch.rand(2, 6, 64, 64)).shape == (2, enc.out_dim)
    with pytest.raises(ValueError, match="resnet_norm"):
        ResNetEncoder(3, width=4, norm="group")


def _rssm(action_dim=3):
    return RSSM(embed_dim=10, action_dim=action_dim, deter=16, hidden=12, stoch=4, classes=5)


def test_rssm_observe_shapes_one_hot_samples_and_straight_through_gradient():
    rssm = _rssm()
    embed = torch.randn(2, 6, 10, requires_grad=True)
    action = torch.randn(2, 6, 3)
    post, prior = rssm.observe(embed, action, generator=torch.Generator().manual_seed(0))
    for state in (post, prior):
        assert state["deter"].shape == (2, 6, 16)
        assert state["stoch"].shape == (2, 6, 20)
        assert state["logits"].shape == (2, 6, 4, 5)
    onehot = post["stoch"].detach().view(2, 6, 4, 5)
    assert torch.allclose(onehot.sum(-1), torch.ones(2, 6, 4), atol=1e-6)  # one class per variable
    torch.testing.assert_close(onehot, onehot.round(), atol=1e-6, rtol=0)  # 0/1 up to the ST rounding
    assert rssm.features(post).shape == (2, 6, 36) and rssm.feat_dim == 36
    # straight-through: the decoder-side loss reaches the embedding through the sampled states
    (grad,) = torch.autograd.grad(rssm.features(post)[:, -1].pow(2).sum(), [embed])
    assert grad[:, :-1].abs().sum() > 0


def test_rssm_is_first_resets_state_and_action():
    rssm = _rssm()
    embed = torch.randn(2, 5, 10)
    action = torch.randn(2, 5, 3)
    is_first = torch.zeros(2, 5, dtype=torch.bool)
    is_first[:, 3] = True
    is_first[:, 0] = True
    post, _ = rssm.observe(embed, action, is_first)
    # after a reset the deterministic state is h = GRU(MLP(0, 0), 0), whatever came before
    torch.testing.assert_close(post["deter"][:, 3], post["deter"][:, 0])
    post_no_reset, _ = rssm.observe(embed, action)
    assert not torch.allclose(post_no_reset["deter"][:, 3], post_no_reset["deter"][:, 0])


def test_rssm_imagine_and_action_free_variant():
    rssm = _rssm()
    state = rssm.initial_state(4)
    nxt = rssm.imagine_step(state, torch.randn(4, 3))
    assert nxt["deter"].shape == (4, 16) and nxt["logits"].shape == (4, 4, 5)
    rolled = rssm.imagine(state, torch.randn(4, 7, 3), horizon=7)
    assert rolled["stoch"].shape == (4, 7, 20)
    mode = rssm.imagine_step(state, torch.zeros(4, 3), sample=False)
    expected = torch.nn.functional.one_hot(mode["logits"].argmax(-1), 5).flatten(-2).float()
    torch.testing.assert_close(mode["stoch"].detach(), expected)
    with pytest.raises(ValueError, match="latent action"):
        rssm.imagine_step(state, None)
    free = _rssm(action_dim=0)
    assert free.img_in_action is None
    post, prior = free.observe(torch.randn(2, 4, 10), None)
    assert post["deter"].shape == (2, 4, 16)


def test_inverse_dynamics_gaussian_and_heads():
    inv = InverseDynamics(width=4, hidden=16, action_dim=6, min_std=0.1)
    o0, o1 = torch.rand(2, 3, 3, 64, 64) - 0.5
    mean, std = inv(o0, o1)
    assert mean.shape == std.shape == (3, 6)
    assert (std >= 0.1).all()
    assert inv.encoder.net[0].in_channels == 6  # both frames, channel-concatenated
    m, s = diag_gaussian(torch.zeros(2, 8), min_std=0.1)
    torch.testing.assert_close(s, torch.full((2, 4), torch.log(torch.tensor(2.0)).item() + 0.1))
    mlp = MLP(5, 3, hidden=7, layers=2, norm=True)
    assert mlp(torch.randn(4, 2, 5)).shape == (4, 2, 3)
    assert sum(isinstance(x, nn.Linear) for x in mlp.modules()) == 3
