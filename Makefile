# kuosan — two commands: `make demo` and `make test`. Each sets up .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kuosan-installed
TORCH ?= torch==2.13.0

.PHONY: setup demo demo-emoji test test-slow bench clean

$(STAMP): pyproject.toml
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	    echo "note: could not install dataset-fashion-mnist; the demo will use the MNIST subset"; } || true
	@bash scripts/install_emoji_data.sh
	@# Chromium for the web page's browser tests (Debian's build; never `playwright install`, which downloads one)
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "note: could not install chromium; the browser tests will be skipped"; } || true
	$(PY) -m venv $(VENV)
	# The CPU build of PyTorch first, so nothing later pulls a multi-GB CUDA build.
	# Elsewhere, point pip at a CPU wheel: make TORCH="torch --index-url <your CPU wheel index>"
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[data,eval,serve,onnx,test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/kuosan demo

# colour, 64x64: an autoencoder, then a class-conditional latent model, ~20 minutes; writes runs/demo-emoji/
demo-emoji: $(STAMP)
	$(BIN)/kuosan demo --data emoji

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/train_sample.py

clean:
	rm -rf $(VENV) runs
