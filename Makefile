# The two commands: `make demo` runs the main job on embedded defaults; `make test` passes the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: demo serve test test-unit lint install install-dev tiny-model train evaluate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=68"

# The pinned dependencies, then the project itself, editable (no dependency of its own beyond requirements.txt).
$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# A tiny random model for trying the service's paths quickly (MODELS=tiny=var/models/tiny); made once.
tiny-model: $(VENV)/.installed
	test -f var/models/tiny/model_index.json || $(BIN)/python -m generator make-tiny --out var/models/tiny

# Migrate, start the API and a worker on SQLite and the file broker, submit a prompt, save the PNG under out/.
demo: $(VENV)/.installed
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python scripts/demo.py

# As deployed: migrate, then gunicorn on :8000 (PORT), one worker and the sweeper in the foreground (Ctrl-C stops
# them). SQLite and the file broker unless DATABASE_URL/REDIS_URL are set; local settings unless
# DJANGO_SETTINGS_MODULE is.
serve: $(VENV)/.installed
	$(BIN)/python scripts/serve.py

# Train the built-in model's stages on the CPU (MODEL_CARD.md has the times) and write it to models/shapes64.
# The steps are configs/recipes/shapes64.yaml's, in order. A step whose output already has `final` is skipped, and
# one interrupted part-way goes on from its last checkpoint: after a stop, `make train` again continues the chain.
train: $(VENV)/.installed
	$(BIN)/python -m generator.train --recipe configs/recipes/shapes64.yaml

# The built-in model's evaluation report, scheduler sweep, explanatory figures, image modes and style LoRA, written into docs/
# (the copies the model card links).
evaluate: $(VENV)/.installed
	$(BIN)/python -m generator.evaluate --model models/shapes64 --out docs/eval
	$(BIN)/python -m generator.sweep --model models/shapes64 --out docs/sweep --prompts 8
	$(BIN)/python -m generator.evaluation.figures --model models/shapes64 --out docs/figures
	$(BIN)/python -m generator.evaluation.modes --model models/shapes64 --out docs/modes --prompts 16
	$(BIN)/python -m generator.evaluation.lora_style --model models/shapes64 --out docs/lora

# Style (ruff) and the architecture contracts in pyproject.toml (import-linter).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Chromium (Debian package) drives the admin in a real browser; installed once if missing.
/usr/bin/chromium:
	command -v apt-get >/dev/null && (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium))

# wrk (Debian package) loads the API in the service benchmarks' smoke tests; installed once if missing.
/usr/bin/wrk:
	command -v apt-get >/dev/null && (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk))

# newman (pinned in package.json and package-lock.json) runs the Postman collection in tests/deploy.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

test: $(VENV)/.installed-dev /usr/bin/chromium /usr/bin/wrk node_modules/.installed lint
	# The venv first on PATH, as in the image: tests run compose's own commands (`python manage.py …`, hadolint).
	PATH="$(CURDIR)/$(BIN):$$PATH" DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -q --durations=25

# The fast inner loop: no servers (SQLite, no broker), no browser, no training, no schema fuzzing; about 80 s on
# 2 cores.
test-unit: $(VENV)/.installed-dev
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python -m pytest -q -m "not servers and not browser and not slow and not fuzz"

clean:
	rm -rf var out .pytest_cache
