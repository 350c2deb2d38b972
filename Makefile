# Two commands do all the set-up on a fresh machine:
#   make demo   - installs everything, then runs the main job (offline, on digits)
#   make test   - installs everything, then runs the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup browser fashion-mnist demo test bench clean

setup: $(VENV)/.installed

# pip resolves torch and torchvision together, so their builds match.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# The optional model sources, in a second step: robustbench's files must overwrite the old copy of a
	# package named robustbench that torchattacks' wheel ships into the same folder.
	$(PY) -m pip install --quiet -e ".[timm,robustbench]"
	touch $@

demo: setup
	$(VENV)/bin/robust-csc demo --out runs/demo

# The report test renders the HTML report in Debian's Chromium (headless).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  { echo "error: $(CHROMIUM) is missing; install Debian's chromium package (apt-get install chromium)" >&2; exit 2; }; }

# Fashion-MNIST, the full-size benchmark, from Debian's package (the tests on the real
# files need it). Without apt the tests that need it are skipped, so this only says so.
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
fashion-mnist:
	@test -f $(FASHION_MNIST) || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	  echo "note: Debian's dataset-fashion-mnist could not be installed (no apt-get, or it failed); the tests on the real Fashion-MNIST files are skipped, and robust-csc reads it from --data-root or fetches it with --download" >&2; }

test: setup browser fashion-mnist
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_csc_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
