# Mirai: every target does its own set-up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE ?= 1

.PHONY: setup data browser demo test bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml requirements.lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -r requirements.lock.txt
	$(PIP) install --quiet --no-deps -e .
	touch $@

# Fashion-MNIST from Debian's package; users elsewhere can point MIRAI_FASHION_MNIST at a
# directory or let the loader download the official files.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$MIRAI_FASHION_MNIST" ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not installed: the loader will download it on first use"; fi

# Chromium and its driver from Debian, for the browser test of `mirai serve` (tests/test_serve.py
# skips that test, saying why, where they cannot be installed).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; } \
	  || echo "Chromium could not be installed: the browser test of mirai serve will be skipped"; \
	else echo "no apt-get: install chromium and chromedriver to run the browser test of mirai serve"; fi

demo: setup
	$(VENV)/bin/mirai demo

test: setup browser
	$(PY) -m pytest -q

# train_throughput.py reads the 8x8-grid training codes; extracting them takes about a minute.
bench: setup runs/codes/fashion-vq8-train/manifest.json
	$(PY) benchmarks/run_all.py

runs/codes/fashion-vq8-train/manifest.json: | setup
	$(VENV)/bin/mirai extract --tokenizer fashion/vq8 --dataset fashion-mnist --split train --out runs/codes/fashion-vq8-train

clean:
	rm -rf $(VENV) runs .pytest_cache
