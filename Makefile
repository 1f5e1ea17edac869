# beam.hotswap — one-command setup, tests and demo on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
COLL_ROOT   := $(CURDIR)/$(VENV)/collections
COLL_LINK   := $(COLL_ROOT)/ansible_collections/beam/hotswap
# Everything the demo and the suite use; `make setup` asks dpkg each time and installs what is missing.
APT_PKGS    := python3 python3-venv erlang-nox erlang-dev erlang-src elixir rebar3 openssh-server \
               openssh-client iproute2 util-linux procps git shellcheck systemd debootstrap ca-certificates
PY_PKGS     := ansible-core==2.19.14 ansible-lint==26.10.1 pytest==9.2.0 hypothesis==6.170.17 \
               jinja2==3.1.6 packaging==26.4
# The collection checks' tools (galaxy-importer, antsibull-docs, ansible-builder) live in a venv of their own,
# so their dependencies never move the pins above; the same ansible-core and ansible-lint as .venv. It sits
# under .venv (like the collection link) because .venv is already ignored by git, ansible-lint and the
# collection build (galaxy.yml build_ignore).
TOOLS_VENV  := $(VENV)/tools
TOOLS_PKGS  := ansible-core==2.19.14 ansible-lint==26.10.1 galaxy-importer==0.4.44 antsibull-docs==2.28.0 \
               ansible-builder==3.2.0
export ANSIBLE_COLLECTIONS_PATH := $(COLL_ROOT)
export PYTHONPATH := $(COLL_ROOT):$(CURDIR)/tests

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: ## install what is missing: apt packages, the .venv, the collection link (checked every time)
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if ! $(PY) -c 'import sys' 2>/dev/null; then rm -rf $(VENV) && /usr/bin/python3 -m venv $(VENV) || python3 -m venv $(VENV); fi
	@if [ "$$(cat $(VENV)/pins 2>/dev/null)" != "$(PY_PKGS)" ] || ! $(PY) -c 'import ansible, pytest, jinja2, packaging' 2>/dev/null; then \
	  echo "pip: installing $(PY_PKGS)"; \
	  $(PY) -m pip install -q --disable-pip-version-check $(PY_PKGS) && echo "$(PY_PKGS)" > $(VENV)/pins; \
	fi
	@mkdir -p $(HOME)/.ansible/test/cache && cp tests/tools/get_pip_stub.py $(HOME)/.ansible/test/cache/get_pip_24_2.py
	@mkdir -p $(dir $(COLL_LINK)) && ln -sfn $(CURDIR) $(COLL_LINK)

test: setup ## the whole suite: unit + integration (real nodes, real fleet), sanity, lint, collection checks
	@t=$$SECONDS; $(VENV)/bin/pytest tests/unit tests/integration; rc=$$?; echo "test: pytest took $$((SECONDS - t)) s"; exit $$rc
	@t=$$SECONDS; $(MAKE) --no-print-directory sanity; rc=$$?; echo "test: sanity took $$((SECONDS - t)) s"; exit $$rc
	@t=$$SECONDS; $(MAKE) --no-print-directory lint; rc=$$?; echo "test: ansible-lint took $$((SECONDS - t)) s"; exit $$rc
	@t=$$SECONDS; $(MAKE) --no-print-directory collection-checks; rc=$$?; echo "test: collection checks took $$((SECONDS - t)) s"; exit $$rc

unit: setup ## fast unit tests only
	$(VENV)/bin/pytest -m "not integration" tests/unit

SANITY_DIR  := $(CURDIR)/tests/output/.sanity-tree/ansible_collections/beam/hotswap

sanity: setup ## ansible-test sanity on a copy of the tracked files laid out as ansible_collections/beam/hotswap
	@rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	@git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(SANITY_DIR)
	@cd $(SANITY_DIR) && git init -q && git add -A && git -c user.name=ci -c user.email=ci@invalid commit -qm sanity
	cd $(SANITY_DIR) && PATH=$(CURDIR)/$(VENV)/bin:$$PATH ansible-test sanity --venv --python 3.11 $(SANITY_ARGS)

lint: setup ## ansible-lint, production profile
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ansible-lint --profile production

collection-checks: setup ## galaxy-importer, antsibull-docs lint and ansible-builder create on the built collection (tools in .venv/tools)
	@if ! $(TOOLS_VENV)/bin/python -c 'import sys' 2>/dev/null; then rm -rf $(TOOLS_VENV) && /usr/bin/python3 -m venv $(TOOLS_VENV) || python3 -m venv $(TOOLS_VENV); fi
	@if [ "$$(cat $(TOOLS_VENV)/pins 2>/dev/null)" != "$(TOOLS_PKGS)" ] || \
	    ! $(TOOLS_VENV)/bin/python -c 'import galaxy_importer, antsibull_docs, ansible_builder' 2>/dev/null; then \
	  echo "pip: installing into $(TOOLS_VENV): $(TOOLS_PKGS)"; \
	  $(TOOLS_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TOOLS_PKGS) && echo "$(TOOLS_PKGS)" > $(TOOLS_VENV)/pins; \
	fi
	bash tests/tools/collection_checks.sh $(CURDIR)/$(TOOLS_VENV)/bin

demo: setup ## local demo fleet: build, first install, hot upgrade under load, cold deploy, rollback, status
	$(PY) tests/hotswap_testlib/demo.py

agent: ## assemble roles/agent/files/hotswap_agent.py from plugins/module_utils/_agent/ (commit the result)
	python3 plugins/module_utils/_agent/_assemble.py

bench: setup ## benchmarks (print figures and ratios; never fail on time)
	$(PY) bench/run.py

fresh-check: ## on a new Debian 12 root (debootstrap): README setup, make unit, one real-node test, make demo
	bash tests/fresh_check/run.sh

clean: ## remove build output (not the venv)
	rm -rf tests/output .hotswap-demo .pytest_cache

.PHONY: help setup test unit sanity lint collection-checks demo agent bench fresh-check clean
