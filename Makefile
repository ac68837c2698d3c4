# Thin front: every target calls the edgepipe CLI or a script; no logic lives here.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EP      := $(BIN)/edgepipe
RECIPE  ?= examples/digits/recipe.yaml
OUT     ?= runs
PROFILES := $(basename $(notdir $(wildcard device_profiles/*.yaml)))

.PHONY: setup demo test lint bench-perf clean $(PROFILES) $(addprefix bench-,$(PROFILES)) $(addprefix release-,$(PROFILES))

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

demo: setup
	$(EP) run $(RECIPE) --device local --out $(OUT)/demo
	$(EP) report $(OUT)/demo --out $(OUT)/demo/report.html
	$(EP) release $(OUT)/demo --device local --dist dist

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench-perf: setup
	$(BIN)/python benchmarks/backends.py

$(PROFILES): setup
	$(EP) run $(RECIPE) --device $@ --out $(OUT)/$@

$(addprefix bench-,$(PROFILES)): setup
	@test -n "$(ARTIFACT)" || { echo "usage: make $@ ARTIFACT=path/to/model.onnx"; exit 2; }
	$(EP) bench $(ARTIFACT) --device $(patsubst bench-%,%,$@)

$(addprefix release-,$(PROFILES)): setup
	$(EP) release $(OUT)/$(patsubst release-%,%,$@) --device $(patsubst release-%,%,$@) --dist dist

clean:
	rm -rf $(OUT) dist .pytest_cache
