# clod: the dependency graph  requirements -> .venv ; base image -> dst image -> running VM.
#
# Every image is a real target: a stamp under state/stamps/ written last by
# bin/image-build, recording the VM it describes and a hash of its inputs.
# `make rebuild-*` only drops stamps. `make help` lists the targets.

SHELL := /bin/sh
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
BIN := $(ROOT)/bin
VENV := $(ROOT)/.venv
PYTHON3 ?= python3
STATE := $(if $(CLOD_STATE_DIR),$(CLOD_STATE_DIR),$(ROOT)/state)
BACKEND := $(if $(CLOD_BACKEND),$(CLOD_BACKEND),$(if $(filter Darwin,$(shell uname -s)),tart,qemu))
GUEST_OS := $(if $(filter tart,$(BACKEND)),macos,debian)
STAMPS := $(STATE)/stamps

# The directory `make` was started from (GNU make keeps the shell's PWD), so
# `make -C ~/clodpod run PROJECT=.` maps the directory you are in.
PROJECT ?= .
ARGS ?=
# PROJECT single-quoted for the recipe shell, whatever characters it holds.
quoted = '$(subst ','\'',$(1))'


# Image settings. Changing one rebuilds what depends on it (see *_VARS below).
MACOS_VERSION ?= tahoe
MACOS_FLAVOR ?= xcode
DEBIAN_SUITE ?= bookworm
CLAUDE_CODE_VERSION ?= 2.1.197
ALLOW_SUDO ?= 0
export MACOS_VERSION MACOS_FLAVOR DEBIAN_SUITE CLAUDE_CODE_VERSION ALLOW_SUDO
export CLOD_BACKEND := $(BACKEND)

# The settings each backend's base image is built from.
BASE_SETTINGS := $(if $(filter tart,$(BACKEND)),MACOS_VERSION MACOS_FLAVOR,DEBIAN_SUITE) CLAUDE_CODE_VERSION ALLOW_SUDO

BASE_STAMP := $(STAMPS)/$(BACKEND)-base.json
DST_STAMP := $(STAMPS)/$(BACKEND)-dst.json
BASE_INPUTS := $(shell find $(ROOT)/guest-setup/$(GUEST_OS) $(ROOT)/guest-setup/common -type f 2>/dev/null | grep -v '/configure')
USER_HOME := $(if $(XDG_CONFIG_HOME),$(XDG_CONFIG_HOME),$(HOME)/.config)/clod/home
DST_INPUTS := $(shell find $(ROOT)/guest-setup/home $(ROOT)/guest-setup/user $(USER_HOME) $(ROOT)/guest-setup/common \
	-type f 2>/dev/null) $(wildcard $(ROOT)/guest-setup/$(GUEST_OS)/configure*)

# Settings live in small files rewritten only when their value changes, so a
# changed setting is an ordinary newer prerequisite.
BASE_VARS := $(STAMPS)/$(BACKEND)-base.vars
DST_VARS := $(STAMPS)/$(BACKEND)-dst.vars
# $(1): the file; $(2): a shell command printing the value.
define write-if-changed
	@mkdir -p $(dir $(1)); { $(2); } > $(1).new; \
	if cmp -s $(1).new $(1); then rm -f $(1).new; else mv $(1).new $(1); fi
endef

# A stamp whose VM no longer exists is stale: drop it before Make compares
# times. Only evaluated for the goals that build images.
IMAGE_GOALS := base dst
ifneq ($(filter $(IMAGE_GOALS),$(MAKECMDGOALS)),)
$(shell $(BIN)/image-build check-stamps >&2)
endif

.PHONY: help venv test lint unit e2e bench run shell base dst stop list rebuild-base rebuild-dst clean-venv FORCE

help: ## @HELP show this list
	@echo "clod - run Claude Code unattended inside a VM ($(BACKEND) backend here)"
	@echo
	@grep -hE '^[a-z0-9-]+:.*## @HELP' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## @HELP (.*)/  make \1\t\2/' | expand -t 26
	@echo
	@echo "  settings (make VAR=value or environment): PROJECT ARGS MACOS_VERSION=$(MACOS_VERSION) MACOS_FLAVOR=$(MACOS_FLAVOR)"
	@echo "    DEBIAN_SUITE=$(DEBIAN_SUITE) CLAUDE_CODE_VERSION=$(CLAUDE_CODE_VERSION) ALLOW_SUDO=$(ALLOW_SUDO) CLOD_CPUS CLOD_MEMORY"
	@echo "  e.g.  make run PROJECT=~/src/myapp          make run PROJECT=. ARGS='-- git status'"

# ---------------------------------------------------------------- venv
venv: $(VENV)/.stamp ## @HELP create .venv from the pinned requirements

$(VENV)/.stamp: $(ROOT)/requirements.txt $(ROOT)/requirements-dev.txt
	@command -v $(PYTHON3) >/dev/null || { echo "clod needs python3 >= 3.11: sudo apt-get install python3 python3-venv" >&2; exit 1; }
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "clod needs python3 >= 3.11 (found $$($(PYTHON3) --version))" >&2; exit 1; }
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(ROOT)/requirements.txt -r $(ROOT)/requirements-dev.txt
	@# lib/ on the venv's path; relative, so it follows the checkout.
	@echo "../../../../lib" > "$$(echo $(VENV)/lib/python3*/site-packages)/clod-lib.pth"
	@touch $@

clean-venv: ## @HELP remove .venv (the next command recreates it)
	rm -rf $(VENV) $(ROOT)/.venv.lock

# ---------------------------------------------------------------- tests
test: lint unit ## @HELP lint, then every test this machine can run (e2e too where QEMU works)

lint: venv ## @HELP ruff and shellcheck over every script
	$(VENV)/bin/ruff check $(ROOT)
	$(VENV)/bin/python $(ROOT)/tests/shellfiles.py | xargs -0 $(VENV)/bin/shellcheck -x

unit: venv
	cd $(ROOT) && $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

e2e: venv ## @HELP only the end-to-end tests that boot real VMs
	cd $(ROOT) && $(VENV)/bin/python -m pytest -m e2e $(PYTEST_ARGS)

bench: venv ## @HELP print start-up, build and boot timings for this host
	$(VENV)/bin/python -I $(ROOT)/tests/bench.py

# ---------------------------------------------------------------- images
$(BASE_VARS): FORCE
	$(call write-if-changed,$@,printf '%s\n' $(foreach v,$(BASE_SETTINGS),$(call quoted,$(v)=$($(v)))))

$(DST_VARS): FORCE
	$(call write-if-changed,$@,git config --global user.name; git config --global user.email; true)

$(BASE_STAMP): $(BASE_INPUTS) $(BASE_VARS) | venv
	$(BIN)/image-build base

$(DST_STAMP): $(BASE_STAMP) $(DST_INPUTS) $(DST_VARS) | venv
	$(BIN)/image-build dst

base: $(BASE_STAMP) ## @HELP build the base image if its inputs changed (slow)
dst: $(DST_STAMP) ## @HELP build the destination image if base or home changed (fast)

rebuild-base: ## @HELP drop the base and dst stamps: the next run rebuilds both
	rm -f $(BASE_STAMP) $(DST_STAMP)

rebuild-dst: ## @HELP drop the dst stamp: the next run rebuilds only dst
	rm -f $(DST_STAMP)

# ---------------------------------------------------------------- VMs
run: venv ## @HELP run Claude Code on PROJECT in the VM (ARGS='-- CMD...' runs CMD)
	cd $(call quoted,$(PWD)) && $(BIN)/clod run --project $(call quoted,$(value PROJECT)) $(ARGS)

shell: venv ## @HELP a shell in the VM, in PROJECT
	cd $(call quoted,$(PWD)) && $(BIN)/clod shell --project $(call quoted,$(value PROJECT))

stop: venv ## @HELP stop every clod VM (QEMU: clean shutdown; Tart: disks flushed, then tart stop)
	$(BIN)/clod stop

list: venv ## @HELP the mapped projects and the clod VMs
	$(BIN)/clod list

FORCE:
