# Quick start (Debian 12, as root): `make demo`, then `make test`. Both set everything up first.
SHELL := /bin/bash
NETLLM := .venv/bin/netllm
PYTEST_ARGS ?=

.PHONY: setup demo test clean-runs

setup:
	bash scripts/setup.sh

demo: setup
	$(NETLLM) stream --video .cache/videos/default --policy robustmpc --out runs/demo

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

clean-runs:
	rm -rf runs
