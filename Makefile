# mirrorhook — developer entry points. `make test` works on a fresh Debian/Ubuntu machine:
# it creates .venv, installs the project with its dev tools, installs rsync when missing, and
# Debian's chromium with its driver for the browser test of the upstream's page, and Debian's
# dnf with createrepo_c for the tests of the mirror list and the Metalink.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: test test-fast test-loaded demo bench lint typecheck pytest rsync browser yum tools brokers web venv clean

test: rsync browser yum tools brokers web lint typecheck pytest

# The everyday loop: everything but the tests marked slow (real daemons, namespaces, floods).
test-fast: venv rsync
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "not slow" -q

# The demo needs mirrorhook alone: not the dev toolchain (linters, browser driver, ...).
demo: $(RUN_STAMP) rsync
	$(BIN)/mirrorhook demo

# Every benchmark in turn; tables on stdout, JSON in bench/results/. BENCHMARKS.md records
# a run and how long it took.
bench: venv rsync web
	$(BIN)/python -m bench.end_to_end
	$(BIN)/python -m bench.fanout
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.sync_overhead
	$(BIN)/python -m bench.manifest_walk
	$(BIN)/python -m bench.delta_sync
	$(BIN)/python -m bench.changes_asked
	$(BIN)/python -m bench.snapshots
	$(BIN)/python -m bench.hook_to_rsync
	$(BIN)/python -m bench.slow_clients
	$(BIN)/python -m bench.many_repos
	$(BIN)/python -m bench.freshness
	$(BIN)/python -m bench.freshness_rows
	$(BIN)/python -m bench.page_load
	$(BIN)/python -m bench.subscriptions

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

venv: $(STAMP)

rsync:
	@sh scripts/install-debs.sh rsync=rsync

# Without a browser (no root, no apt) the page's browser test is skipped, saying why.
browser:
	@sh scripts/install-debs.sh chromium=chromium chromedriver=chromium-driver \
		|| echo "no browser: the browser test of the page will be skipped" >&2

# Debian's dnf and createrepo_c: the mirror list and the Metalink are tested with the client
# that reads them. Without root or apt those tests are skipped, saying why.
yum:
	@sh scripts/install-debs.sh dnf=dnf createrepo_c=createrepo-c \
		|| echo "no dnf: the tests with dnf will be skipped" >&2

# iproute2 (ip, ss) for the network-namespace and listen-queue tests, Debian's ftpsync for
# the trace file's reference fields, btrfs-progs for snapshots on a btrfs of the test's
# own. In CI a test whose tool is missing fails, not skips.
tools:
	@sh scripts/install-debs.sh ip=iproute2 ss=iproute2 ftpsync=ftpsync mkfs.btrfs=btrfs-progs \
		unshare=util-linux losetup=mount \
		|| echo "missing tools: the tests that need them will be skipped" >&2

# Debian's mosquitto (and its clients) and nats-server for the subscription tests through
# real brokers (one Mosquitto; a three-node NATS cluster with its MQTT listener); the tests
# start their own on loopback, never the system services.
brokers:
	@sh scripts/install-debs.sh mosquitto=mosquitto mosquitto_sub=mosquitto-clients \
		nats-server=nats-server openssl=openssl \
		|| echo "no brokers: the MQTT tests will be skipped" >&2

# Debian's nginx for the snapshot tests: contrib/nginx-snapshots.conf's fallback to the
# previous snapshot, served to readers; the tests start their own on loopback.
web:
	@sh scripts/install-debs.sh nginx=nginx \
		|| echo "no nginx: the tests through a web server will be skipped" >&2

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# The bytecode first: where PYTHONDONTWRITEBYTECODE is set (CI machines set it), each of the
# many mirrorhook processes the tests start would otherwise compile it from source again.
pytest: venv rsync browser yum tools brokers web
	rm -f .coverage .coverage.*
	$(BIN)/python -m compileall -q "$(CURDIR)/src"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report  # fails under the floor in pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis .coverage .coverage.* htmlcov

# make test three times in a row with every core kept busy by a bounded burner.
test-loaded:
	for run in 1 2 3; do sh scripts/under-load.sh $(MAKE) test || exit 1; done
