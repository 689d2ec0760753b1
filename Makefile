# pvxen: two commands matter, `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
JOBS   ?= 3

.PHONY: run stop test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (with venv)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m examples.demo

stop: $(STAMP)
	$(VENV)/bin/pvxen down

# The suite runs on $(JOBS) pytest-xdist workers; tests sharing a host resource
# (real TAPs) carry an xdist_group mark and run on one worker in turn
# (--dist loadgroup); the few `exclusive` ones (timing ratios) run alone after.
# See tests/framework/hostres.py. Both parts always run; either failing fails.
test: $(STAMP)
	@rc=0; \
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup -m "not exclusive" || rc=$$?; \
	$(PY) -m pytest -q -p no:xdist -m exclusive || rc=$$?; \
	exit $$rc

bench: $(STAMP)
	$(PY) -m bench xenstore

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
