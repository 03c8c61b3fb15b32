# casa: `make demo` and `make test` each do all set-up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.casa-installed
NODE_STAMP := $(VENV)/node/.casa-installed
# The Python environment users' notebook servers run from. Under root it must live where
# other accounts can read it (casa's own .venv may point into /root); built from Debian's
# Python. Without root, the facility serves one account, which uses casa's own .venv.
USER_ENV := /opt/casa-user-env
USER_STAMP := $(USER_ENV)/.casa-installed
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

# Debian packages: XRootD (origin, XCache) with SciTokens; Debian's Python with venv for the
# users' environment; Chromium for the browser test; Slurm and munge for the multi-host
# site test (hosts made with network namespaces); Node (when there is none) for
# configurable-http-proxy.
APT_PACKAGES := xrootd-server xrootd-client xrootd-server-plugins xrootd-scitokens-plugins \
                xrootd-client-plugins python3-venv python3-dev chromium passwd \
                slurm-wlm munge iproute2 util-linux

.PHONY: install system-packages user-env demo test lint docs clean

install: system-packages $(STAMP) $(NODE_STAMP) $(if $(IS_ROOT),$(USER_STAMP))

# apt when something is missing and we are root; otherwise say what to install.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "casa needs these Debian packages:$$missing"; \
	    echo "install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# casa's environment (casa itself in editable mode) with every Python dependency.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,bench]"
	@touch $@

# configurable-http-proxy for JupyterHub, and playwright-core for the browser test.
$(NODE_STAMP): tests/browser/package-lock.json
	mkdir -p $(VENV)/node
	cd $(VENV)/node && npm install --silent --no-audit --no-fund configurable-http-proxy@5.3.0
	cd tests/browser && npm ci --silent --no-audit --no-fund
	@touch $@

# The users' environment: a copy of casa (not editable: users cannot read this checkout
# under /root) with JupyterLab and its extensions.
user-env: $(USER_STAMP)
$(USER_STAMP): pyproject.toml $(shell find src -name '*.py' -o -name '*.ipynb')
	[ -x $(USER_ENV)/bin/python ] || /usr/bin/python3 -m venv $(USER_ENV)
	$(USER_ENV)/bin/pip install --quiet --upgrade pip
	$(USER_ENV)/bin/pip install --quiet .
	chmod -R a+rX $(USER_ENV)
	@touch $@

demo: install
	$(BIN)/casa demo

# Three test processes (pytest-xdist), each module in one of them: most tests wait on servers
# they started (with two processes the cores were busy 70% of the run), so three share two
# cores and end about a sixth sooner. TEST_WORKERS=0 runs everything in one process.
# --durations: the 25 slowest tests are listed, to keep the whole run under 25 minutes;
# --no-loadscope-reorder: modules start in the order tests/conftest.py gives (longest first).
TEST_WORKERS ?= 3
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

# docs/configuration.md, rendered from casa.toml's model (tests/test_configuration_reference.py
# fails when the two differ).
docs: $(STAMP)
	$(BIN)/python -m casa.config.reference > docs/configuration.md.tmp
	mv docs/configuration.md.tmp docs/configuration.md

clean:
	rm -rf $(VENV) demo-output .pytest_cache tests/browser/node_modules
