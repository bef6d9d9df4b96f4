#!/usr/bin/env bash
# Wheels the GPU check (bench/gpu_check.sh) needs on a device machine that has Python 3.12 and its own CUDA
# torch but none of this project's other packages: numpy, pydantic, pyyaml, tqdm and pytest at the pins of
# pyproject.toml, with their dependencies, for CPython 3.12 on manylinux x86_64 (numpy's wheels are
# manylinux_2_28). Run it here, where PyPI is reachable; carry the folder to the device machine, where
# gpu_check.sh installs what is missing from it with no index.
#
#   bash scripts/device_wheels.sh [DIR]        (default: .device_wheels, git-ignored)
#
# Sourced (gpu_check.sh does), it only defines `device_requirements`.
set -euo pipefail

# The check's requirements, read from pyproject.toml (one home for the pins): "name==version" per line.
device_requirements() {
  grep -oE '"(numpy|pydantic|pyyaml|tqdm|pytest)==[^"]+"' \
    "$(dirname "${BASH_SOURCE[0]}")/../pyproject.toml" | tr -d '"'
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  cd "$(dirname "$0")/.."
  dir=${1:-.device_wheels}
  mkdir -p "$dir"
  # shellcheck disable=SC2046  # one argument per requirement
  "${PYTHON:-python3}" -m pip download --quiet --dest "$dir" --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    $(device_requirements)
  ls "$dir"
  echo "$(du -sh "$dir" | cut -f1) in $dir: carry it to the device machine with the working tree"
fi
