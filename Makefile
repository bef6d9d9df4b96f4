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

# Two pytest workers, one OpenMP thread each (two 2-thread PyTorch processes on 2 cores slow both ~6x); a test
# file stays on one worker, in order (the end-to-end `dvc repro` test runs beside the others).
test: setup
	.venv/bin/ruff check prelar pipelines tests bench
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=10 tests

# bench_reference.py needs the user's checkout of the reference code (--ref PATH; see its docstring).
bench: setup
	for b in bench/bench_*.py; do [ $$b = bench/bench_reference.py ] || .venv/bin/python $$b; done
