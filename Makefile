# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pins torch to the CPU build that is on disk on the development machines (DESIGN.md, environment facts).
PIP_CONSTRAINTS := constraints.txt

$(BIN)/ctqa: pyproject.toml $(PIP_CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(PIP_CONSTRAINTS) -e ".[test]"
	touch $@

.PHONY: setup browser demo test bench clean
setup: $(BIN)/ctqa

# Debian's chromium for the HTML report screenshot tests (installed when this is a root shell with apt-get; the tests
# skip with a reason otherwise).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "chromium is not installed (apt-get install chromium): the report screenshot tests will skip"

demo: setup
	$(BIN)/ctqa sample sample_data
	$(BIN)/ctqa assess sample_data/sample_ct.nrrd --reference sample_data/sample_reference_ct.nrrd \
		--roi sample_data/sample_labels.nrrd --roi-names sample_data/sample_labels.txt --out demo_output

test: setup browser
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_physics.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_simulation.py
	$(BIN)/python benchmarks/bench_assess.py
	$(BIN)/python benchmarks/bench_runner.py
	$(BIN)/python benchmarks/bench_batch.py

clean:
	rm -rf sample_data demo_output
