"""bench/bench_reference.py: what needs no reference checkout (stubs, settings, attribution, report)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

SPEC = importlib.util.spec_from_file_location(
    "bench_reference", Path(__file__).resolve().parents[1] / "bench" / "bench_reference.py"
)
bench = sys.modules["bench_reference"] = importlib.util.module_from_spec(SPEC)  # bench/ is not a package
SPEC.loader.exec_module(bench)

LSCPU = """Architecture:                            x86_64
Model name:                              AMD EPYC 7B13
Flags:                                   fpu vme avx avx2 fma sha_ni
"""
CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""


def _run(round_, precision, impl, update_s, peak_rss_gib):
    return {
        "round": round_,
        "precision": precision,
        "impl": impl,
        "update_s": update_s,
        "times_s": [update_s] * 3,
        "warmup_s": [2 * update_s] * 2,
        "frames": 400,
        "flops": 1.6e12,
        "peak_rss_gib": peak_rss_gib,
        "params_m": 28.7,
        "losses": [1.0],
    }


RUNS = [
    _run(1, "fp32", "reference", 20.0, 5.0),
    _run(1, "fp32", "ours", 10.0, 3.5),
    _run(2, "fp32", "reference", 22.0, 5.2),
    _run(2, "fp32", "ours", 12.0, 3.5),
]
PEAKS = {
    "matmul_gflops": 140.0,
    "images": 400,
    "conv_fwd_gflops": 150.0,
    "conv_fwd_bwd_gflops": 120.0,
    "convs": [{"shape": "48->48 @32x32", "count": 4, "fwd_gflops": 150.0, "fwd_bwd_gflops": 120.0}],
}


@pytest.fixture
def cleanup_modules():
    """Names put into sys.modules by a test are taken out again."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_install_stubs_puts_light_modules_in_parent_first_order(cleanup_modules):
    marker = object()
    stubbed = bench.install_stubs({"benchprobe.sub": {"value": marker}, "benchprobe": {}, "json": {"x": 1}})
    assert stubbed == ["benchprobe", "benchprobe.sub"]  # json is imported already: left alone
    import benchprobe.sub

    assert benchprobe.sub.value is marker and sys.modules["benchprobe"].sub is benchprobe.sub
    assert not hasattr(sys.modules["json"], "x")


def test_reference_stubs_satisfy_the_reference_imports(cleanup_modules):
    already = {name for name in bench.REFERENCE_STUBS if name in sys.modules}
    assert set(bench.install_stubs(bench.REFERENCE_STUBS)) == set(bench.REFERENCE_STUBS) - already
    # the reference's import lines and annotations (wmlib/nets/dynamics/rssm.py, nets/encoder/ctx_resnet.py)
    namespace: dict = {}
    exec(
        "import wandb, kornia\n"
        "import torchvision.transforms as T\n"
        "from torchtyping import TensorType, patch_typeguard\n"
        "from typeguard import typechecked\n"
        "def observe(embed: TensorType['batch', 'seq', 'emb_dim'], action: TensorType['batch', 'act_dim']):\n"
        "    return embed\n"
        "checked = typechecked(observe)\n",
        namespace,
    )
    assert namespace["checked"] is namespace["observe"] and namespace["observe"](3, 4) == 3


def test_reference_settings_are_the_readme_flags_and_only_what_the_size_needs():
    paper = bench.reference_settings("paper", "fp32")
    assert paper == {
        "precision": 32,
        "vanet.type_": "stoch",
        "vanet.discrete": 0,
        "vanet.stoch": 64,
        "rank_loss": "sign",
        "device": "cpu",
    }
    assert bench.reference_settings("paper", "bf16")["precision"] == 16  # its autocast switch
    small, s = bench.reference_settings("small", "fp32"), bench.SIZES["small"]
    assert small["decoder.cnn_input_dim"] == s.deter + s.stoch * s.classes
    assert small["rssm.embed_dim"] == 16 * 4 * s.width
    assert small["dataset.batch"] == s.batch and small["vanet.cnn_depth"] == s.width


def test_parts_attribute_flops_and_backward_time_by_sequence_number():
    a, b = nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False)
    parts = bench._Parts()
    parts.wrap(a, "forward", "encoder")
    parts.wrap(b, "forward", "decoder")
    x = torch.randn(5, 8)  # no gradient: the encoder's backward is its weight gradient alone

    def update():
        parts.ranges.clear()
        b(a(x)).sum().backward()

    flops = bench._part_flops(parts, update)
    assert flops[("encoder", "forward")] == 2 * 5 * 8 * 16 and flops[("decoder", "forward")] == 2 * 5 * 16 * 4
    assert flops[("decoder", "backward")] == 2 * (2 * 5 * 16 * 4)  # input and weight gradients
    assert flops[("encoder", "backward")] == 2 * 5 * 8 * 16
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        update()
    seconds = bench.part_seconds(prof.events(), parts)
    assert {k for k, v in seconds.items() if v > 0} >= {
        (p, phase) for p in ("encoder", "decoder") for phase in ("forward", "backward")
    }


@pytest.mark.parametrize(
    "text, model", [(LSCPU, "AMD EPYC 7B13"), (CPUINFO, "Intel(R) Xeon(R) Platinum 8480+")]
)
def test_parse_cpu_reads_lscpu_and_cpuinfo(text, model):
    cpu = bench.parse_cpu(text)
    assert cpu["model"] == model
    amx = text is CPUINFO
    assert cpu["flags"] == {"avx2": True, "avx512f": amx, "avx512_bf16": amx, "amx_bf16": amx}


def test_summarize_medians_ratios_and_rounds():
    row = bench.summarize(RUNS)["fp32"]
    assert row["speedup"] == pytest.approx(21.0 / 11.0)  # medians over the processes
    assert row["speedup_per_round"] == pytest.approx([2.0, 22.0 / 12.0])
    assert row["memory_ratio"] == pytest.approx(3.5 / 5.1)
    assert row["ours"]["frames_per_s"] == pytest.approx(400 / 11.0)
    assert row["ours"]["gflops_per_s"] == pytest.approx(1600 / 11.0)
    assert bench.summarize(RUNS[:1]) == {}  # one side only: no comparison


def test_report_prints_headline_flags_peaks_and_skips():
    report = {
        "machine": {"model": "AMD EPYC 7B13", "cores": 2, "torch": "2.13.0", **bench.parse_cpu(LSCPU)},
        "threads": 2,
        "size_name": "paper",
        "size": vars(bench.SIZES["paper"]),
        "reference": "/r at fb9c4d2",
        "skipped": {"bf16": "auto: CPU emulates bf16"},
        "peaks": {"fp32": PEAKS},
        "runs": RUNS,
        "summary": bench.summarize(RUNS),
    }
    text = bench.format_report(report)
    assert "HEADLINE fp32: ours/reference 1.91x updates/s (per round 2.00x, 1.83x)" in text
    assert "peak memory ours/reference 0.69x" in text
    assert "ours 145 GFLOP/s = 104% of the matmul peak, 121% of the encoder convs' fwd+bwd peak" in text
    assert "avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no" in text
    assert "bf16: skipped: auto: CPU emulates bf16" in text
    assert "2048^2 matmul 140.0 GFLOP/s" in text and "48->48 @32x32 x4: 150 / 120" in text
    assert text.count("round 1 fp32") == 2 and text.count("round 2 fp32") == 2


def test_profile_table_shares_and_peaks():
    parts = {
        p: {"forward_s": 0.0, "backward_s": 0.0, "forward_flops": 0, "backward_flops": 0} for p in bench.PARTS
    }
    parts["encoder"] = {"forward_s": 1.0, "backward_s": 2.0, "forward_flops": 120e9, "backward_flops": 240e9}
    parts["rssm loop"] = {"forward_s": 0.5, "backward_s": 0.5, "forward_flops": 7e9, "backward_flops": 7e9}
    text = bench.format_profile(
        "fp32", {"parts": parts, "profiled_s": 4.0, "update_s": 3.8, "top_ops": "ops"}, PEAKS
    )
    rows = {line[:17].strip(): line[17:].split() for line in text.splitlines()[3:13]}
    assert rows["encoder"] == ["1.00", "2.00", "3.00", "75%", "360.0", "120.0", "100%", "conv"]
    assert rows["rssm loop"][-2:] == ["10%", "mm"]
    assert rows["update"] == ["1.50", "2.50", "4.00", "100%", "374.0", "93.5", "67%", "mm,", "78%", "conv"]
