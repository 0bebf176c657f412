# smtp-tarpit: `make run` sets up and runs the server on config/smtp-tarpit.toml; `make test` runs every test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: run test test-uvloop lint typecheck system-deps bench fuzz clean

$(STAMP): pyproject.toml
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  rm -rf $(VENV); apt-get update -q && $(APT) python3-venv && $(PY) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(STAMP)
	$(BIN)/smtp-tarpit serve --config config/smtp-tarpit.toml

# Debian packages the tests talk to: swaks (a real SMTP client), fail2ban (fail2ban-regex reads our logs),
# chromium and chromium-driver (the status page in a real browser). Installed when missing and we are root;
# otherwise the tests that need them are skipped with the reason.
# postfix (a real downstream MTA, and smtp-sink / smtp-source) is installed without its questions and
# without starting the system instance: tests run private instances with their own config directories.
SYSTEM_TOOLS := swaks:swaks fail2ban-regex:fail2ban chromium:chromium chromedriver:chromium-driver \
	smtp-sink:postfix redis-server:redis-server haproxy:haproxy
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -q && $(APT) $$missing; \
	  else echo "not root, not installing:$$missing (the tests that need them will be skipped)"; fi; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

# The same suite on uvloop (the optional `fast` extra), in a venv of its own.
test-uvloop:
	$(MAKE) VENV=.venv-uvloop .venv-uvloop/.installed
	.venv-uvloop/bin/pip install -q -e '.[test,fast]'
	.venv-uvloop/bin/pytest

# Every benchmark, each against its baseline in the same run (about 15 minutes; see bench/README.md).
bench: $(STAMP) system-deps
	$(BIN)/python bench/held_connections.py --connections 10000
	$(BIN)/python bench/maildir_rate.py --clients 20 --messages 2000 --runs 3
	$(BIN)/python bench/fd_limit.py
	$(BIN)/python bench/harvest_efficacy.py
	$(BIN)/python bench/relay_rate.py
	$(BIN)/python bench/store_ops.py
	$(BIN)/python bench/store_latency.py

# Coverage-guided fuzzing of the SMTP core (atheris, the `fuzz` extra) for FUZZ_SECONDS, from seeds made of
# tests/hostile/corpus; new inputs are kept in var/fuzz, a failing one is saved as var/fuzz/crash-<sha1>.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install -q -e '.[test,fuzz]'
	$(BIN)/python fuzz/fuzz_core.py --seeds var/fuzz-seeds
	mkdir -p var/fuzz
	$(BIN)/python fuzz/fuzz_core.py -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/smtp.dict \
	  -artifact_prefix=var/fuzz/ var/fuzz var/fuzz-seeds

clean:
	rm -rf $(VENV) .venv-uvloop var build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
