import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# MuJoCo picks its GL backend when first imported: offscreen EGL on CPU (see scripts/setup.sh).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# The end-to-end `dvc repro` file (tests/test_pipeline.py) is half of the suite's time: with `-n 2 --dist
# loadfile` (the Makefile), one worker runs it first and alone while the other takes every other file.
# (Plain loadfile queues further files behind it on its worker, which then finish long after the other
# worker has gone idle.) The other worker takes the longest files first (HEAVY, tens of seconds each, in
# order), so that the files left when the pipeline's worker joins in are short ones.
SOLO = "tests/test_pipeline.py"
HEAVY = (
    "tests/test_gpu_check.py", "tests/test_online.py", "tests/test_pretrain.py", "tests/test_study.py",
    "tests/test_agent_finetune.py", "tests/test_data_ingest.py", "tests/test_evaluate_transfer.py",
    "tests/test_device.py", "tests/test_tracking.py", "tests/test_evaluate_probe.py",
)  # fmt: skip


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: `-p no:xdist` still runs
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SoloFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            for name in (*reversed(HEAVY), SOLO):
                if name in self.workqueue:
                    self.workqueue.move_to_end(name, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node):
            solo = self.assigned_work.get(node, {}).get(SOLO, {})
            if not all(solo.values()):
                return  # this worker finishes the pipeline file before it takes another
            super()._reschedule(node)

    return SoloFirst(config, log)


@pytest.fixture(scope="session")
def new_mlflow_store(tmp_path_factory) -> Callable[[Path], str]:
    """`new_mlflow_store(folder)`: the tracking URI of a new, empty MLflow SQLite store in `folder`.

    Each is a copy of one store created once per test process: creating a store runs MLflow's schema
    migrations, ~3 s each time (a stage that opens an existing store skips them)."""
    import mlflow

    template = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()

    def new(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "mlflow.db").exists():
            raise FileExistsError(f"{folder / 'mlflow.db'}: a store is already there")
        shutil.copyfile(template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return new


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """Tiny PreLAR and action-free checkpoints, each trained for a step on real Meta-world frames."""
    import numpy as np
    import torch

    from prelar import checkpoint, config
    from prelar.envs.metaworld import make_env
    from prelar.world_model import WorldModel

    folder = tmp_path_factory.mktemp("pretrained")
    env = make_env("drawer-close-v3", seed=0, max_steps=20)
    frames = [env.reset(seed=0)[0]]
    rng = np.random.default_rng(0)
    for _ in range(7):
        frames.append(env.step(rng.uniform(-1, 1, 4))[0])
    env.close()
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).reshape(2, 4, 3, 64, 64)  # uint8
    model_params = config.load(Path(__file__).resolve().parents[1] / "params.yaml", "tiny").model
    paths = {}
    for name, switches in [
        ("prelar", {}),
        ("action_free", {"action_free": True}),
        ("prelar_no_cl", {"use_consistency": False}),
    ]:
        torch.manual_seed(1)
        cfg = model_params.model_copy(update=switches)
        model = WorldModel(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss, _, _ = model.loss(video)
        loss.backward()
        opt.step()
        paths[name] = checkpoint.save(
            folder / f"{name}.pt",
            model=model,
            optimizer=opt,
            step=1,
            model_config=cfg.model_dump(),
            rng=[checkpoint.rng_state()],
        )
    return paths
