# The two commands of the README: `make run` and `make test`. Everything else is a step
# of theirs. All set-up is idempotent, so running either twice costs seconds.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack
INSTALLED := $(VENV)/.installed

.PHONY: run test prepare deps venv stack tools services migrate keys unit integration lint down status clean chaos regions-test

run: prepare
	deploy/local/run

test: prepare lint
	$(STACK) env > .stack/env.sh
	source .stack/env.sh && $(PY) -m pytest tests -q -p no:cacheprovider

unit: venv tools
	$(PY) -m pytest tests/unit -q

integration: venv stack
	source <($(STACK) env) && $(PY) -m pytest tests/integration -q

# The venv (pip, Cython) and the stack (Maven, servers) wait on different things, so they
# are built side by side. All apt work happens first: two apt-gets would fight over its lock.
prepare: deps
	$(STACK) prerequisites
	$(MAKE) --no-print-directory -j2 venv stack tools

# System packages the build needs (the servers are installed by deploy/local/stack).
deps:
	@missing=""; for pkg in gcc libssl-dev pkg-config; do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

venv: deps $(INSTALLED)

# Reinstall when the dependencies or the compiled hot path change.
$(INSTALLED): pyproject.toml setup.py $(wildcard gateway/_fast/*.pyx gateway/_fast/*.pxd gateway/_fast/*.pxi)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel Cython==3.3.1
	$(PY) -m pip install -q -e '.[dev,bench,admin]'
	$(PY) -c "import gateway._fast as f; print('compiled hot path:', f.__file__)"
	touch $@

# --secure: Kafka also gets a SASL/SCRAM listener for tests/integration/test_kafka_sasl.py;
# the plaintext listener the services use by default is unchanged.
stack:
	$(STACK) up --secure

# The operator tools the deploy checks run (tests/unit/test_deploy_tools.py), built from
# source with Go into .stack/bin. One stamp per version: a second run does nothing, and a
# version bump here rebuilds that one tool. promtool's module version v0.X.Y is
# Prometheus 3.X.Y.
GO ?= $(or $(shell command -v go),/usr/local/go/bin/go)
TOOLS := .stack/bin
HELM_VERSION := v3.22.0
PROMTOOL_VERSION := v0.316.0
TOFU_VERSION := v1.12.6

tools: $(TOOLS)/.built/helm-$(HELM_VERSION) $(TOOLS)/.built/promtool-$(PROMTOOL_VERSION) \
	$(TOOLS)/.built/tofu-$(TOFU_VERSION)

# go_install MODULE@VERSION: build one command into $(TOOLS), then touch the stamp ($@).
define go_install
	@test -x $(GO) || { echo "building $(1) needs the Go toolchain (>= 1.25)"; exit 1; }
	@mkdir -p $(@D)
	GOBIN=$(abspath $(TOOLS)) $(GO) install $(1)
	@touch $@
endef

$(TOOLS)/.built/helm-%:
	$(call go_install,helm.sh/helm/v3/cmd/helm@$*)
$(TOOLS)/.built/promtool-%:
	$(call go_install,github.com/prometheus/prometheus/cmd/promtool@$*)
# `go install module@version` refuses a module whose go.mod has replace directives, as
# OpenTofu's has: build it inside its downloaded copy instead.
$(TOOLS)/.built/tofu-%:
	@test -x $(GO) || { echo "building tofu needs the Go toolchain (>= 1.25)"; exit 1; }
	@mkdir -p $(@D)
	dir=$$($(GO) mod download -json github.com/opentofu/opentofu@$* | \
	  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	cd "$$dir" && $(GO) build -trimpath -o $(abspath $(TOOLS))/tofu ./cmd/tofu
	@touch $@

status:
	$(STACK) status

down:
	$(STACK) down

# Lint and formatting are part of `make test`: a tree that is not ruff-clean does not pass.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The region-loss test on two simulated regions (deploy/local/regions: two more Kafka
# JVMs, MirrorMaker 2, three PostgreSQL servers), kept out of `make test` for its weight
# (README.md, "What the two commands do"). It needs no single-region stack: tests/regions/
# has no fixture of it.
regions-test: venv
	VOTE_REGION_TESTS=1 $(PY) -m pytest tests/regions -q -p no:cacheprovider

# Every chaos scenario under load on its own 3-node stack (.stack/chaos/): a command, not a
# test (make test runs a short subset). Arguments: make chaos CHAOS_ARGS='--scenarios x,y'.
chaos: venv
	$(PY) -m bench chaos $(CHAOS_ARGS)

clean: down
	if [ -d .stack/chaos ]; then STACK_DIR=$(CURDIR)/.stack/chaos $(STACK) down; fi
	rm -rf .stack build *.egg-info gateway/_fast/*.so gateway/_fast/_core.c
