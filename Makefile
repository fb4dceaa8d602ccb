# The one entry point. `make demo` and `make test` install what they need first.
VENV ?= $(HOME)/.cache/llmq/venv
export PATH := $(VENV)/bin:$(PATH)
export LLMQ_VENV := $(VENV)
PYTEST_ARGS ?=

PYTHON ?= python3.11
PACKAGES ?=

.PHONY: all install lock lock-upgrade demo bench faults test lint mypy unit integration up down status

all: lint mypy test

install:
	bash deploy/install.sh

# Re-resolve the lock after a change to pyproject.toml or deploy/lock/*.in, keeping every
# locked version the new inputs allow; lock-upgrade moves all (or PACKAGES="a b") to the newest.
lock:
	$(PYTHON) deploy/lock.py

lock-upgrade:
	$(PYTHON) deploy/lock.py --upgrade $(PACKAGES)

demo: install
	llmq demo

bench: install
	llmq bench

faults: install
	llmq faults

test: install lint mypy
	pytest $(PYTEST_ARGS)

lint:
	ruff check .
	ruff format --check .
	lint-imports

mypy:
	mypy

unit:
	pytest tests/unit $(PYTEST_ARGS)

integration:
	pytest tests/integration $(PYTEST_ARGS)

up:
	llmq local up

down:
	llmq local down

status:
	llmq local status
