"""The GPU device check's CPU half (bench/gpu_check.sh --device cpu --size tiny), so that it cannot rot.

It runs as the device machine would see it: without webdataset, MLflow, DVC, MuJoCo and Meta-world (an
import finder blocks them in every process of the check), which proves that the model, the trainer step,
checkpoints and the fine-tuning update import none of them.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("webdataset", "mlflow", "dvc", "mujoco", "metaworld")  # absent on the device machine
BLOCKER = f'''import sys


class Blocked:
    """Finds the packages the device machine lacks, and fails as their absence would."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Blocked())
'''
FIGURES = {
    "pretrain": ["ms_per_update", "frames_per_s", "peak_memory_gib", "flops_per_update",
                 "matmul_bf16_tflop_per_s", "share_of_matmul_rate", "convolutions_ms", "rssm_loop_ms",
                 "convolutions_share", "rssm_loop_share"],
    "finetune": ["ms_per_update", "peak_memory_gib", "share_world_model", "share_imagination",
                 "share_actor_critic"],
}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def test_cpu_half_end_to_end_without_the_packages_the_device_lacks(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # imported by every Python process of the check
    env = _env(PYTHONPATH=str(site))
    blocked = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr

    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out), "--device", "cpu", "--size", "tiny"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    figures = json.loads((out / "figures.json").read_text())
    assert (out / "gpu_check.log").read_text() == done.stdout  # the log holds everything printed
    steps = figures["steps"]
    # the CUDA tests, collected without the blocked packages (skipped without CUDA; the suite runs the rest)
    tests = steps["tests"]
    assert tests["passed"] + tests["skipped"] >= 4 and tests["failed"] == 0
    for step, keys in FIGURES.items():
        for key in keys:
            value = steps[step][key]
            assert isinstance(value, float | int) and math.isfinite(value) and value > 0, (step, key, value)
            assert key in done.stdout  # printed, not only written
    shares = [steps["finetune"][k] for k in FIGURES["finetune"] if k.startswith("share_")]
    assert 0.9 < sum(shares) <= 1.0  # the three phases are the whole update (up to the batch copy)
    assert "CUDA only" in steps["pretrain_compile"]["skipped"]
    assert "mujoco" in steps["render"]["skipped"] or "metaworld" in steps["render"]["skipped"]


def test_render_step_times_meta_world_frames(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", str(tmp_path), "--device", "cpu", "--size", "tiny",
         "--step", "render"],
        cwd=REPO, env=_env(MUJOCO_GL="egl"), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    render = json.loads((tmp_path / "render.json").read_text())
    assert render["frames"] == 20 and render["frames_per_s"] > 0 and render["mujoco_gl"] == "egl"


def test_device_wheels_are_the_pins_of_pyproject():
    listed = subprocess.run(
        ["bash", "-c", "source scripts/device_wheels.sh && device_requirements"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert sorted(r.split("==")[0] for r in listed) == ["numpy", "pydantic", "pytest", "pyyaml", "tqdm"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert all(f'"{r}"' in pyproject for r in listed)
