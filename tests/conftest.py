import os

# MuJoCo picks its GL backend when first imported: offscreen EGL on CPU (see scripts/setup.sh).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
