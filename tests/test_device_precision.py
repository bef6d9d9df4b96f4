"""`precision: auto`: bf16 only where the device computes it natively, fp32 elsewhere (prelar/device.py)."""

import warnings

import pytest
import torch

from prelar import config, device

CPU = torch.device("cpu")
NATIVE = (True, "CPU computes bf16 (amx_bf16=yes)")
EMULATED = (False, "CPU emulates bf16 (amx_bf16=no, avx512_bf16=no)")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    device._warned.clear()
    yield
    device._warned.clear()


def test_auto_picks_bf16_where_native_and_fp32_where_emulated():
    chosen = device.choose_precision("auto", CPU, support=NATIVE)
    assert chosen.name == "bf16" and "amx_bf16=yes" in chosen.reason
    chosen = device.choose_precision("auto", CPU, support=EMULATED)
    assert chosen.name == "fp32" and "emulates" in chosen.reason


def test_explicit_precisions_are_kept():
    assert device.choose_precision("fp32", CPU, support=NATIVE).name == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where bf16 is native
        assert device.choose_precision("bf16", CPU, support=NATIVE).name == "bf16"


def test_explicit_bf16_where_emulated_runs_but_warns_once_with_the_fix():
    with pytest.warns(RuntimeWarning, match=r"slower .*precision: auto") as caught:
        assert device.choose_precision("bf16", CPU, support=EMULATED).name == "bf16"
    assert "x slower" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time is silent
        assert device.choose_precision("bf16", CPU, support=EMULATED).name == "bf16"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        device.choose_precision("fp16", CPU)
    with pytest.raises(config.ConfigError, match="precision"):
        config.override(config.Params(), {"pretrain.precision": "fp16"})


def test_auto_is_the_default_of_every_stage():
    params = config.Params()
    assert params.pretrain.precision == params.finetune.precision == params.evaluate.precision == "auto"


def test_this_machines_answer_agrees_with_a_measured_probe():
    """The capability flags must match what a matmul measures: bf16 faster than fp32 exactly where native
    (AMX ~8x, AVX-512 BF16 ~4x faster; emulated on AVX2 ~80x slower)."""
    native, reason = device.bf16_support(CPU)
    speedup = device.measured_bf16_speedup(CPU, n=512, repeats=5)
    assert (speedup > 1.0) == native, f"{reason}, but bf16 measured {speedup:.2f}x the speed of fp32"
    with device.autocast(CPU, "auto"):
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
