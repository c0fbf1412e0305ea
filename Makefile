# Two commands on a fresh machine with python3 and make: `make run` and `make test`.
# Everything they need is installed here, into .venv, from the package registry.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Runs keep their history (visible in `make ui`) in a project-local Dagster home.
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install run test ui bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed-dev

# Local history only: no telemetry, no first-run pop-up over the UI. Run monitoring marks a run
# whose process died with the daemon (kill -9, power loss) as failed instead of STARTED for ever.
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' > $@
	printf 'run_monitoring:\n  enabled: true\n  start_timeout_seconds: 180\n  max_runtime_seconds: 3600\n' >> $@

## run: the CI job on the bundled sample (or $KVONCE_OTLP_PAYLOAD); ends with the verdict. Its recipe exits
## 1 on a violation, 2 on an unusable input, 3 on another failure; GNU make itself then exits 2.
run: install $(DAGSTER_HOME)/dagster.yaml
	@$(BIN)/dagster job execute -m kvonce_pipeline -j kvonce_conformance_job > $(DAGSTER_HOME)/last-run.log 2>&1; \
	rc=$$?; \
	report=$${KVONCE_REPORTS_DIR:-hermetic-reports}/trace; \
	if [ -f $$report/kvonce-summary.md ]; then cat $$report/kvonce-summary.md; fi; \
	echo "dagster job exit code: $$rc (full log: $(DAGSTER_HOME)/last-run.log; artifacts in $$report/)"; \
	$(BIN)/python -m kvonce_pipeline.orchestration.run_verdict --job kvonce_conformance_job --dagster-exit $$rc

## test: the type check, then the whole test suite
test: install
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

## ui: the Dagster UI and daemon on http://127.0.0.1:3000 (history kept in .dagster_home/)
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## bench: the benchmark table and chart (sizes 10k, 100k, 1M; BENCH_ARGS=--with-10m for 10M)
bench: $(VENV)/.installed-bench
	$(BIN)/python -m kvonce_pipeline.devtools.bench $(BENCH_ARGS)

## bench-domains: a domain made from the template against KvOnce, same size (DOMAINS_ARGS="--events 100000 --keys 40000" for a quick look)
.PHONY: bench-domains
bench-domains: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/domains_speed.py $(DOMAINS_ARGS)

## bench-shards: key shards on a local dask cluster, S = 1, 2, 4 (SHARDS_ARGS="--events 1000000 --keys 400000" for 1M)
.PHONY: bench-shards
bench-shards: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/shards_scale.py $(SHARDS_ARGS)

## fuzz: two minutes of coverage-guided fuzzing of the sniffer and decoders (FUZZ_SECONDS=120)
FUZZ_SECONDS ?= 120
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,fuzz]'
	mkdir -p hermetic-reports/fuzz-corpus
	$(BIN)/python fuzz/fuzz_decoders.py hermetic-reports/fuzz-corpus fuzz/seeds -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf hermetic-reports/trace hermetic-reports/bench/*.tmp .pytest_cache
