# The two Quick start commands. Each does all the set-up it needs first: the
# Debian packages (scripts/setup.sh), then the project, editable, in a virtual
# environment (scripts/venv.sh), which everything then runs from.
#
#   make test PYTHON=python3.12 VENV=.venv-3.12    another interpreter
#   make test-all                                  every installed CPython
#   make docs                                      the documentation site, build/docs/html
PYTHON ?= python3
VENV   ?= .venv
PYTEST  = $(VENV)/bin/python -m pytest -q -p no:cacheprovider

export PYTHON VENV

.PHONY: demo test test-all docs setup clean

setup:
	@scripts/setup.sh
	@scripts/venv.sh

# The demo needs only the demo extra (numpy, capstone, mfusepy): not the test and
# bench ones. An environment made by make test already has it.
demo:
	@start=$$(date +%s); scripts/setup.sh && EXTRAS=demo scripts/venv.sh && \
	    echo "setup: done in $$(( $$(date +%s) - start )) s"
	@$(VENV)/bin/python -m mcsafe demo

test: setup
	@$(PYTEST) tests benchmarks --benchmark-disable

# Warnings are errors (-W), all of them reported (--keep-going), and every
# cross-reference must resolve (-n): a renamed function or a broken link fails.
docs: setup
	@$(VENV)/bin/python -m sphinx -b html -E -W --keep-going -n -q docs build/docs/html
	@echo "docs: build/docs/html/index.html"

test-all:
	@scripts/test-all.sh

clean:
	rm -rf build dist .venv .venv-3.* mcsafe/_mcsafe.c mcsafe/*.so extable/*.so *.egg-info
