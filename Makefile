PYTHON ?= python
METHODS := $(shell cd conf/method && ls *.yaml | sed 's/\.yaml$$//' | paste -sd, -)

.PHONY: install test lint smoke reproduce

install:
	$(PYTHON) -m pip install -e '.[dev]'

test:
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

# Every method in conf/method/ for a few steps on the tiny generated pair, on CPU.
smoke:
	dir=$$(mktemp -d -t transferlab-smoke-XXXX) && \
	$(PYTHON) -m transferlab -m method=$(METHODS) data=tiny device=cpu \
		trainer.steps=5 trainer.eval_every=5 trainer.progress_bar=false \
		hydra.sweep.dir=$$dir

# The paper settings of docs/RESULTS.md: every method, 3 seeds, on each pair whose data is
# under $TRANSFERLAB_DATA (or ./data); then docs/RESULTS.md from those runs (and docs/bench.json
# from `python scripts/bench.py --json docs/bench.json`, if present). MNIST→MNIST-M took 33 min
# on a 2-core CPU with REPRODUCE_ARGS=hydra/launcher=parallel (two 1-thread jobs at a time) for
# the five methods before mcc, mcd, vada and dirtt (their wall times: docs/RESULTS.md). The
# method order matters: adda and finetune reuse source_only's training as their pretraining,
# and dirtt reuses vada's, from the stage cache (README, "Pretraining is done once").
REPRODUCE_DIR ?= multirun/reproduce
EXPERIMENTS ?= mnist_mnistm
REPRODUCE_ARGS ?=
reproduce:
	for exp in $(EXPERIMENTS); do \
		$(PYTHON) -m transferlab -m experiment=$$exp \
			method=source_only,target_only,dann,mcc,mcd,vada,adda,finetune,dirtt seed=0,1,2 \
			trainer.progress_bar=false hydra.sweep.dir=$(REPRODUCE_DIR)/$$exp $(REPRODUCE_ARGS) || exit 1; \
	done
	# DANN with twice the steps: the step budget that source validation accuracy selects
	# (docs/RESULTS.md, "How the numbers were made").
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=dann trainer.steps=20000 \
		seed=0,1,2 trainer.progress_bar=false \
		hydra.sweep.dir=$(REPRODUCE_DIR)/mnist_mnistm-dann20k $(REPRODUCE_ARGS)
	# DANN with MCC stacked on it (README, "Stacking regularisers"), as MCC's paper reports it.
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=dann '+method/regularizers=[mcc]' \
		seed=0,1,2 trainer.progress_bar=false \
		hydra.sweep.dir=$(REPRODUCE_DIR)/mnist_mnistm-dann_mcc $(REPRODUCE_ARGS)
	$(PYTHON) scripts/results.py $(REPRODUCE_DIR) --out docs
