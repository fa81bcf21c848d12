# The two commands of README.md: `make run` (main job) and `make test` (whole test suite).
.PHONY: setup run test bench
PY := .venv/bin/python
RKD := .venv/bin/rkd

setup:
	@bash scripts/setup.sh

run: setup
	$(RKD) distill --resume

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench --all
