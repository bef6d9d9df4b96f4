#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine: the libraries MuJoCo needs to render offscreen
# (EGL, with OSMesa as fallback), then a virtual environment with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=0
for lib in libEGL.so.1 libOSMesa.so.8 libGL.so.1; do
  ldconfig -p | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libosmesa6 >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# DVC needs a git repository (a clean clone is one); make sure DVC is initialised in it.
[ -d .dvc ] || .venv/bin/dvc init -q
echo "setup done: $(.venv/bin/python -c 'import torch, mujoco; print("torch", torch.__version__, "mujoco", mujoco.__version__)')"
