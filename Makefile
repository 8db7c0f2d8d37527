# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install protos lint typecheck clean bench bench-smoke chaos mutants hosts host-tools \
	prometheus-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m replica.launcher $(RUN_ARGS)

test: $(STAMP) host-tools prometheus-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The test hosts (testsupport/netns.py) need nft; as root, install it where it is missing
# (without root those tests skip, saying why).
host-tools:
	@command -v nft >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get install -y -qq nftables >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null; }; }
	@command -v tmux >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get install -y -qq tmux >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq tmux >/dev/null; }; }

# Prometheus and promtool for the alert rules' tests (deploy/prometheus): Debian's package,
# unpacked under .venv -- not installed, which would start a Prometheus service on the machine.
PROMETHEUS_BIN := $(VENV)/prometheus/usr/bin
prometheus-tools: $(PROMETHEUS_BIN)/promtool

$(PROMETHEUS_BIN)/promtool:
	@mkdir -p $(VENV)/prometheus
	@cd $(VENV)/prometheus && rm -f prometheus_*.deb && \
		{ apt-get download prometheus >/dev/null 2>&1 || \
		  { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && \
		    apt-get download prometheus >/dev/null 2>&1; }; } && \
		dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb || \
		echo "prometheus-tools: could not unpack Debian's prometheus package (the alert tests skip)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy eventlog projections replica client

# A few minutes: prints a table, writes bench/results/latest.json (+ a timestamped copy).
# BENCH_ARGS="--backend sqlite --only throughput,failover" narrows it; see docs/bench.md.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Rounds of random faults under load (SIGKILL one/two/all, SIGSTOP the primary, MySQL
# connections dropped, MariaDB restarted); prints rounds, acknowledged sends, lost, duplicated.
# CHAOS_ARGS="--backend sqlite --rounds 20 --seed N" narrows or replays a run.
# On test hosts with the network faults (root):
# CHAOS_ARGS="--hosts netns --min-insync 2" (faults that would leave too few replicas running
# for min_insync are left out; --faults partition_primary,... names some).
# Membership faults only when named: CHAOS_ARGS="--faults add_replica,remove_replica,
# replace_replica,kill_one,pause_primary" (replicas joined, promoted, removed, replaced).
chaos: $(STAMP) host-tools
	$(BIN)/python -m tests.chaos --rounds 100 --backend mysql $(CHAOS_ARGS)

# Known-wrong changes to the protocol core and to its shell -- the executor, its ports, the
# commit tracker, the writer (tests/mutants/catalog.py) -- each applied to a copy of the
# repository: the unit tests and the model must catch every one, the model alone at least
# 80% of those in code it runs (the rest -- the writer, the storage worker, the peers' calls,
# the secondary's stream, the node -- the unit tests alone catch, and the model is not run for
# them; the run prints how many of each; docs/replication.md has the history).
# Over an hour; MUTANTS_ARGS="--only NAME --model-seconds 120" narrows it.
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants $(MUTANTS_ARGS)

# Three replicas on test hosts of their own (root), and a prompt to cut and heal the network
# between them: see the README, "Run it as three hosts and cut the network".
# HOSTS_ARGS="--min-insync 2" changes the cluster.
hosts: $(STAMP) host-tools
	$(BIN)/python -m testsupport.hosts_lab $(HOSTS_ARGS)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke $(BENCH_ARGS)

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
