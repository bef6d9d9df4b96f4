# The two commands of the README. Both set up a fresh machine first (idempotent).
export MUJOCO_GL ?= egl
export PYTHONHASHSEED = 0
# DVC stages call the `prelar` command of the project's virtual environment.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test bench
setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/ruff check prelar pipelines tests bench
	.venv/bin/python -m pytest -q tests

bench: setup
	for b in bench/bench_*.py; do .venv/bin/python $$b; done
