# Thin front: every target calls the edgepipe CLI or a script; no logic lives here.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EP      := $(BIN)/edgepipe
RECIPE  ?= examples/digits/recipe.yaml
OUT     ?= runs
# pytest-xdist workers: one per core
JOBS    ?= auto
PROFILES := $(basename $(notdir $(wildcard device_profiles/*.yaml)))

.PHONY: setup demo test test-scenarios lint bench-perf clean $(PROFILES) $(addprefix bench-,$(PROFILES)) $(addprefix release-,$(PROFILES))

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

# make test: everything but the long end-to-end scenarios, on every core. --dist loadfile keeps each test file on one
# worker, so a module fixture that trains, runs the CLI or starts an sshd runs once, not once per worker.
# One torch thread per worker (OMP_NUM_THREADS, unless set): N workers on N cores, not N x N threads thrashing.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile -m "not scenario"

# make test-scenarios: the long end-to-end runs (README "Tests"): every examples/*/recipe.yaml as shipped at --scale,
# the demo, the fleets and the search over SSH, the emulated Raspberry Pi. CI runs it after make test. --dist
# loadfile, as in make test: the demo's and the search's module fixtures run once (pytest-xdist 3.8's loadgroup did
# not group a module's pytestmark xdist_group here, and the demo ran twice).
test-scenarios: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile -m scenario \
		--durations=0

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
