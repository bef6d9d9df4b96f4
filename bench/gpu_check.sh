#!/usr/bin/env bash
# The GPU device check (issue 11) in one call, at most 8 minutes on one GPU:
#
#   bash bench/gpu_check.sh OUTDIR [--device cuda|cpu] [--size paper|tiny]
#
# prints every figure, and writes the log (gpu_check.log), the figures (figures.json, one <step>.json per
# step) and pytest's report into OUTDIR; the steps are in bench/gpu_check.py. `--device cpu --size tiny` is
# the CPU half that CI runs (tests/test_gpu_check.py).
#
# Python: $PYTHON (default python3) with its own torch (the machine's CUDA build). When it lacks numpy,
# pydantic, pyyaml, tqdm or pytest, they are installed from .device_wheels/ (scripts/device_wheels.sh, run
# beforehand where PyPI is reachable) into .device_venv/, a virtual environment that sees the machine's
# packages (--system-site-packages), or, where the venv module is missing, into .device_site/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash bench/gpu_check.sh OUTDIR [--device cuda|cpu] [--size paper|tiny]" >&2
  exit 2
fi
out=$1
shift
mkdir -p "$out"
python=${PYTHON:-python3}
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-$MUJOCO_GL}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

missing_requirements() {  # the pinned requirements that $1 cannot import
  local req module
  for req in $(device_requirements); do
    module=${req%%==*}
    [[ $module == pyyaml ]] && module=yaml
    "$1" -c "import $module" 2>/dev/null || echo "$req"
  done
}

# shellcheck source=../scripts/device_wheels.sh
source "$repo/scripts/device_wheels.sh"
if [[ -n $(missing_requirements "$python") ]]; then
  wheels=$repo/.device_wheels
  [[ -d $wheels ]] || { echo "$python lacks:" $(missing_requirements "$python") "- run scripts/device_wheels.sh" >&2; exit 2; }
  target=()
  if [[ -x $repo/.device_venv/bin/python ]] || "$python" -m venv --system-site-packages "$repo/.device_venv"; then
    python=$repo/.device_venv/bin/python
  else
    rm -rf "$repo/.device_venv"  # a venv without pip (no ensurepip here)
    target=(--target "$repo/.device_site")
    export PYTHONPATH="$PYTHONPATH:$repo/.device_site"
  fi
  missing=$(missing_requirements "$python")
  # shellcheck disable=SC2086  # one argument per requirement
  [[ -z $missing ]] || "$python" -m pip install --isolated --quiet --no-index --find-links "$wheels" "${target[@]}" $missing
fi
"$python" -c "import torch" || { echo "$python cannot import torch: the check uses the machine's own" >&2; exit 2; }
"$python" "$repo/bench/gpu_check.py" "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
