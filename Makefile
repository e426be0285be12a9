# Entry points: `make demo` (the demo finetuning on generated data) and `make test`.
# Both create .venv on first use. CPU machines get the CPU build of torch; GPU users can run
# `make setup TORCH_SPEC=torch` (or any CUDA build) instead.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-slow test-all demo demo-full bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# pytest exits 5 when it collected nothing: that must fail, not pass silently.
define run_pytest
	$(PY) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef

test: setup
	$(call run_pytest,-q)

test-slow: setup
	$(call run_pytest,-q -m slow)

test-all: setup
	$(call run_pytest,-q -m "slow or not slow")

demo: setup
	$(PY) scripts/demo.py --output demo_output

# The longer demo: 400 game episodes per agent and held-out evaluations during phases 2 and 3.
demo-full: setup
	$(PY) scripts/demo.py --output demo_output --full

clean:
	rm -rf demo_output demo_data bench_output demo_env_output

# From pixels to an agent in an environment nobody here wrote (docs/environments.md): Acrobot-v1 frames, its
# scripted behaviour policy (recipes/env_policies.py), the tokenizer, phases 1-3, evaluation: demo_env_output/report.md.
.PHONY: demo-env
demo-env: setup
	SDL_VIDEODRIVER=dummy $(PY) scripts/env_demo.py --env Acrobot-v1 --policy recipes.env_policies:acrobot_policy \
		--output demo_env_output --recipe cpu
