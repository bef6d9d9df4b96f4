import os

# MuJoCo picks its GL backend when first imported: offscreen EGL on CPU (see scripts/setup.sh).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# The end-to-end `dvc repro` file (tests/test_pipeline.py) is half of the suite's time: with `-n 2 --dist
# loadfile` (the Makefile), one worker runs it first and alone while the other takes every other file.
# (Plain loadfile queues further files behind it on its worker, which then finish long after the other
# worker has gone idle.)
SOLO = "tests/test_pipeline.py"


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SoloFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if SOLO in self.workqueue:
                self.workqueue.move_to_end(SOLO, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node):
            solo = self.assigned_work.get(node, {}).get(SOLO, {})
            if not all(solo.values()):
                return  # this worker finishes the pipeline file before it takes another
            super()._reschedule(node)

    return SoloFirst(config, log)
