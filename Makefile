# Quick start (Debian 12, as root): `make demo`, then `make test`. Both set everything up first.
SHELL := /bin/bash
NETLLM := .venv/bin/netllm
PYTEST_ARGS ?=
# The deciding policy of `make demo`: any registry name, e.g. `make demo POLICY=netllm` (the committed
# SmolLM2-based NetLLM model in models/netllm-abr-smollm2) or POLICY=bba.
POLICY ?= robustmpc

.PHONY: setup demo test clean-runs

setup:
	bash scripts/setup.sh

DEMO_TRACE := .cache/traces/demo-stepped.txt

# One live session: Chromium plays the default 48-chunk video through a Mininet link that replays a stepped
# trace (3, 1.2, 4.5, 0.8 Mbps for 30 s each, looping), 80 ms RTT, $(POLICY) deciding every chunk.
demo: setup
	@test -f $(DEMO_TRACE) || $(NETLLM) gen-trace stepped --steps 3:30,1.2:30,4.5:30,0.8:30 --out $(DEMO_TRACE)
	$(NETLLM) stream --video .cache/videos/default --trace $(DEMO_TRACE) --rtt-ms 80 --policy $(POLICY) --out runs/demo/$(shell date +%Y%m%d-%H%M%S)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

clean-runs:
	rm -rf runs
