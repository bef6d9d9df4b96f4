"""The same tests on every device: the CPU always, CUDA where a GPU is present (marker `cuda`: run them
with `pytest -m cuda`; bench/gpu_check.sh does, on a device machine that has torch, pydantic, pyyaml, tqdm,
numpy and pytest only).

World-model loss and backward, pre-training updates with a checkpoint and an exact resume, fine-tuning
updates (world model, imagination, actor-critic) and acting, and bf16 autocast against fp32 on the same
batch; at the `tiny` profile's sizes, on synthetic uint8 segments.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from prelar import checkpoint, config, device, pretrain
from prelar.agent.finetune import Agent
from prelar.agent.model import ACTION_DIM
from prelar.world_model import WorldModel

# Deterministic cuBLAS for the exact resume: read when CUDA first multiplies, so set before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
REPO = Path(__file__).resolve().parents[1]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
    ),
]


@pytest.fixture
def deterministic():
    """Deterministic kernels (cuDNN convolutions, cuBLAS, indexed accumulation): same inputs, same bits."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def _params(dev: str, precision: str = "fp32", **updates) -> config.Params:
    params = config.load(REPO / "params.yaml", profile="tiny")
    return config.override(
        params,
        {
            "pretrain.device": dev,
            "pretrain.precision": precision,
            "finetune.device": dev,
            "finetune.precision": precision,
            **updates,
        },
    )


def _frames(params: config.Params, seed: int, dev: torch.device) -> torch.Tensor:
    """Synthetic segments uint8 [B, T, 3, 64, 64] (drawn on the CPU: the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    shape = (params.loader.batch_size, params.loader.segment_length, 3, 64, 64)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(dev)


def _generator(dev: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=dev).manual_seed(seed)


@pytest.mark.parametrize("dev", DEVICES)
def test_world_model_loss_and_backward(dev, deterministic):
    params = _params(dev)
    dist = device.setup(dev)
    model, _ = pretrain.build(params, dist)
    frames = _frames(params, 0, dist.device)
    loss, metrics, outputs = model.loss(frames, _generator(dist.device, 0))
    assert loss.device.type == dev and torch.isfinite(loss)
    assert outputs["post"]["deter"].device.type == dev
    assert all(torch.isfinite(v) for v in metrics.values())
    assert metrics["kl_action"] > 0 and metrics["consistency"] > 0  # every term of Eq. 9 is live
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    again, _, _ = model.loss(frames, _generator(dist.device, 0))
    assert again.item() == loss.item()  # the generator makes the device's samples reproducible


def _updates(params, dist, model, optimizer, steps: range) -> list[float]:
    """Pre-training updates as the trainer takes them: batch and generator a function of the step."""
    objective = pretrain.objective_of(model, params, dist)
    losses = []
    for step in steps:
        frames = _frames(params, step, dist.device)
        update = pretrain.train_step(
            model, objective, optimizer, frames, _generator(dist.device, step), params.pretrain, dist
        )
        losses.append(update["loss"].item())
    return losses


@pytest.mark.parametrize("dev", DEVICES)
def test_pretrain_updates_resume_exactly_from_a_checkpoint(dev, deterministic, tmp_path):
    params = _params(dev, precision="bf16")  # the trainer's precision on a GPU
    dist = device.setup(dev)
    model, optimizer = pretrain.build(params, dist)
    straight = _updates(params, dist, model, optimizer, range(4))

    first, first_opt = pretrain.build(params, dist)
    before = _updates(params, dist, first, first_opt, range(2))
    path = checkpoint.save(
        tmp_path / "checkpoint.pt",
        model=first,
        optimizer=first_opt,
        step=2,
        model_config=params.model.model_dump(),
        rng=[checkpoint.rng_state()],
    )
    del first, first_opt
    ckpt = checkpoint.load(path, map_location=dist.device)
    resumed, resumed_opt = pretrain.build(params, dist)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["optimizer"])
    checkpoint.set_rng_state(ckpt["rng"][0])
    after = _updates(params, dist, resumed, resumed_opt, range(2, 4))

    assert all(np.isfinite(straight)) and straight[0] != straight[-1]
    assert before + after == straight
    state = resumed_opt.state_dict()["state"]
    assert all(v.device.type == dev for s in state.values() for v in s.values() if v.dim() > 0)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert a.device.type == dev and torch.equal(a, b), name


@pytest.mark.parametrize("dev", DEVICES)
def test_finetune_updates_and_acting(dev):
    params = _params(dev, **{"finetune.method": "prelar"})
    cfg = params.finetune
    torch.manual_seed(0)
    agent = Agent(params, WorldModel(params.model), torch.device(dev))
    rng = np.random.default_rng(0)
    B, T = cfg.batch_size, cfg.segment_length
    batch = {
        "frames": rng.integers(0, 256, (B, T, 3, 64, 64), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (B, T, ACTION_DIM)).astype(np.float32),
        "rewards": rng.uniform(0, 1, (B, T)).astype(np.float32),
        "is_first": np.eye(1, T, dtype=bool).repeat(B, 0),  # [B, T]: segments start their episodes
    }
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    for _ in range(2):
        metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert {"model/total", "behavior/actor_loss", "behavior/critic_loss", "time/imagine_s"} <= set(metrics)
    after = agent.state_dict()
    for prefix in ("model.world.decoder.", "model.reward_head.", "behavior.actor.", "behavior.critic."):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"no parameter under {prefix} was updated"
    assert all(v.device.type == dev for v in after.values())

    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    action, state = agent.act(frame, np.zeros(ACTION_DIM, np.float32), True, None, explore=True)
    assert action.shape == (ACTION_DIM,) and np.all(np.abs(action) <= 1)
    assert state["deter"].device.type == dev


@pytest.mark.parametrize("dev", DEVICES)
def test_bf16_autocast_is_close_to_fp32_on_the_same_batch(dev):
    params = _params(dev)
    dist = device.setup(dev)
    model, _ = pretrain.build(params, dist)
    frames = _frames(params, 0, dist.device)

    def loss_and_gradient(precision: str):
        model.zero_grad(set_to_none=True)
        with device.autocast(dist.device, precision):
            loss, metrics, _ = model.loss(frames, _generator(dist.device, 0))
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss, metrics, grad

    loss32, metrics32, grad32 = loss_and_gradient("fp32")
    loss16, metrics16, grad16 = loss_and_gradient("bf16")
    assert loss16.dtype == torch.float32 and torch.isfinite(grad16).all()
    assert loss16.item() == pytest.approx(loss32.item(), rel=5e-3)
    assert metrics16["image_nll"].item() == pytest.approx(metrics32["image_nll"].item(), rel=5e-3)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.95
