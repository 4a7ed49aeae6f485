# engagement: `make run` runs the whole system, `make test` runs the tests. Nothing to install by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test stop migrate clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python manage.py run

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: install
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

migrate: install
	$(BIN)/python manage.py migrate

# Stops embedded PostgreSQL / Redis left running in .data/ (e.g. after a kill -9).
stop: install
	$(BIN)/python -m engagement.embedded stop

clean:
	rm -rf $(VENV) *.egg-info
