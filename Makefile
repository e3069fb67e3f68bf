# `make test` and `make demo` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile -o tmp_path_retention_policy=failed tests

$(VENV)/.demo-installed: $(VENV)/.installed requirements-demo.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-demo.txt
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) tools/demo.py --out_dir=demo_out

clean:
	rm -rf demo_out .pytest_cache
