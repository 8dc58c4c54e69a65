PYTHON ?= python
METHODS := $(shell ls conf/method | sed 's/\.yaml$$//' | paste -sd, -)
SMOKE_DIR ?= $(shell mktemp -d -t transferlab-smoke-XXXX)

.PHONY: install test lint smoke

install:
	$(PYTHON) -m pip install -e '.[dev]'

test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

# Every method in conf/method/ for a few steps on the tiny generated pair, on CPU.
smoke:
	$(PYTHON) -m transferlab -m method=$(METHODS) data=tiny device=cpu \
		trainer.steps=5 trainer.eval_every=5 trainer.progress_bar=false \
		hydra.sweep.dir=$(SMOKE_DIR)
	@echo "smoke outputs in $(SMOKE_DIR)"
