PYTHON ?= python
METHODS := $(shell cd conf/method && ls *.yaml | sed 's/\.yaml$$//' | paste -sd, -)

.PHONY: install test lint smoke reproduce selection-study results-pages docs analyze-figures \
	gpu-check

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Test files spread over the cores (pytest-xdist); `loadfile` keeps each file on one worker, so
# a file's session fixtures (e.g. the uninterrupted reference run) are made once.
test:
	$(PYTHON) -m pytest -q -n auto --dist loadfile

lint:
	$(PYTHON) -m ruff check .

# Every method in conf/method/ for a few steps on the tiny generated pair, on CPU, the backbone
# with batch norm (AdaBN and TENT adapt it; the other methods' tests run without it too).
smoke:
	dir=$$(mktemp -d -t transferlab-smoke-XXXX) && \
	$(PYTHON) -m transferlab -m method=$(METHODS) data=tiny device=cpu backbone.batch_norm=true \
		trainer.steps=5 trainer.eval_every=5 trainer.progress_bar=false \
		hydra.sweep.dir=$$dir

# Studies resume where they stopped and collect each finished run's record into results/
# (src/transferlab/studies.py). STUDY_ARGS narrow them, e.g.
#   make reproduce STUDY_ARGS="--only experiment=mnist_usps --only method=dann"
# and `python -m transferlab.studies status studies/<plan>.yaml` says how far one is.
STUDY_ARGS ?=
reproduce:
	$(PYTHON) -m transferlab.studies run studies/reproduce.yaml $(STUDY_ARGS)

selection-study:
	$(PYTHON) -m transferlab.studies run studies/selection.yaml $(STUDY_ARGS)

# The tables and figures of docs/RESULTS.md, docs/USPS.md and docs/SELECTION.md, from the
# committed records in results/ only (tests/test_pages.py fails when a page differs).
results-pages:
	$(PYTHON) -m transferlab.pages docs

# The documentation site; --strict: a broken link or a page missing from the nav fails.
docs:
	$(PYTHON) -m mkdocs build --strict --site-dir site

# The GPU path end to end (every method in bf16 and fp32, kill-and-resume, the benchmark) in
# under ten minutes; prints one table. Skipped, with a message, where CUDA is not available.
gpu-check:
	$(PYTHON) scripts/gpu_check.py --json docs/gpu_check.json

# docs/RESULTS.md's "Seeing adaptation": a source-only and a DANN run of 10,000 steps on
# MNIST→MNIST-M (data under $TRANSFERLAB_DATA), `python -m transferlab.analyze` on both, and
# copies of their analysis.json, confusion matrices and side-by-side t-SNE in docs/analysis/
# (docs/RESULTS.md renders them with `make results-pages`). Rerunning reuses finished runs.
ANALYSIS_DIR ?= multirun/analysis
ANALYSIS_ARGS ?=
analyze-figures:
	for m in source_only dann; do \
		$(PYTHON) -m transferlab method=$$m data=mnist_mnistm trainer.progress_bar=false \
			hydra.run.dir=$(ANALYSIS_DIR)/$$m $(ANALYSIS_ARGS) || exit 1; \
	done
	$(PYTHON) -m transferlab.analyze $(ANALYSIS_DIR)/source_only $(ANALYSIS_DIR)/dann
	mkdir -p docs/analysis
	cp $(ANALYSIS_DIR)/tsne_side_by_side.png docs/analysis/tsne_mnist_mnistm.png
	for m in source_only dann; do \
		cp $(ANALYSIS_DIR)/$$m/analysis.json docs/analysis/$$m.json && \
		cp $(ANALYSIS_DIR)/$$m/confusion.png docs/analysis/confusion_$$m.png || exit 1; \
	done
