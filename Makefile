# The one entry point. `make demo` and `make test` install what they need first.
VENV ?= $(HOME)/.cache/llmq/venv
export PATH := $(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: all install demo bench faults test lint mypy unit integration up down status

all: lint mypy test

install:
	bash deploy/install.sh

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
