import hashlib
import random

import numpy as np
import pytest
import torch

from prelar import checkpoint, config
from prelar.world_model import WorldModel

TINY = config.Model(cnn_width=8, deter=32, hidden=32, stoch=4, classes=4, latent_action_dim=8)


def _save(path, model, step=1, extra=None):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return checkpoint.save(
        path,
        model=model,
        optimizer=optimizer,
        step=step,
        model_config=TINY.model_dump(),
        rng=[checkpoint.rng_state()],
        extra=extra,
    )


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    model = WorldModel(TINY)
    path = _save(tmp_path / "checkpoint.pt", model)
    expected = _draws()
    assert _draws() != expected  # the states moved on
    ckpt = checkpoint.load(path)  # torch.load(weights_only=True) inside
    checkpoint.set_rng_state(ckpt["rng"][0])
    assert _draws() == expected


def test_load_world_model_rebuilds_the_model_from_the_file_alone(tmp_path):
    torch.manual_seed(2)
    model = WorldModel(TINY)
    path = _save(tmp_path / "checkpoint.pt", model, step=7)
    loaded, ckpt = checkpoint.load_world_model(path)
    assert ckpt["step"] == 7
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    torch.manual_seed(3)
    model = WorldModel(TINY)
    path = _save(tmp_path / "checkpoint.pt", model, step=1)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails mid-write
        _save(path, model, step=2, extra={"not_serialisable": lambda: 0})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    assert checkpoint.load(path)["step"] == 1


def test_load_refuses_foreign_files_and_arbitrary_objects(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a prelar checkpoint"):
        checkpoint.load(foreign)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": checkpoint.FORMAT, "obj": config.Model()}, unsafe)  # an arbitrary class instance
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        checkpoint.load(unsafe)
    with pytest.raises(FileNotFoundError, match="prelar pretrain"):
        checkpoint.load(tmp_path / "missing.pt")
