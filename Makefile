# make demo / make test: create .venv when missing, install with the tested constraints, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.njet-installed
PYTEST_ARGS ?= -n 2

.PHONY: demo test data lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dev]'
	touch $@

data: $(STAMP)
	bash scripts/install_test_data.sh $(PY)

demo: $(STAMP) data
	$(PY) -m njet_convert.demo

test: $(STAMP) data
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# njet_layers strict, njet_convert's public API and command line ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
