PYTHON ?= python
METHODS := $(shell cd conf/method && ls *.yaml | sed 's/\.yaml$$//' | paste -sd, -)

.PHONY: install test lint smoke reproduce analyze-figures gpu-check selection-study

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Test files spread over the cores (pytest-xdist); `loadfile` keeps each file on one worker, so
# a file's session fixtures (e.g. the uninterrupted reference run) are made once.
test:
	$(PYTHON) -m pytest -q -n auto --dist loadfile

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
			method=source_only,target_only,dann,adda,finetune,dan,coral,cdan,mdd,iwerm,iwdan,mcc,mcd,vada,dirtt seed=0,1,2 \
			trainer.progress_bar=false hydra.sweep.dir=$(REPRODUCE_DIR)/$$exp $(REPRODUCE_ARGS) || exit 1; \
	done
	# DANN with twice the steps: the step budget that source validation accuracy selects
	# (docs/RESULTS.md, "How the numbers were made").
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=dann trainer.steps=20000 \
		seed=0,1,2 trainer.progress_bar=false \
		hydra.sweep.dir=$(REPRODUCE_DIR)/mnist_mnistm-dann20k $(REPRODUCE_ARGS)
	# CDAN+E, the paper's entropy-conditioned variant of CDAN.
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=cdan method.entropy_conditioning=true \
		seed=0,1,2 trainer.progress_bar=false \
		hydra.sweep.dir=$(REPRODUCE_DIR)/mnist_mnistm-cdan_e $(REPRODUCE_ARGS)
	# DANN with MCC stacked on it (README, "Stacking regularisers"), as MCC's paper reports it.
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=dann '+method/regularizers=[mcc]' \
		seed=0,1,2 trainer.progress_bar=false \
		hydra.sweep.dir=$(REPRODUCE_DIR)/mnist_mnistm-dann_mcc $(REPRODUCE_ARGS)
	$(PYTHON) scripts/results.py $(REPRODUCE_DIR) --out docs

# The GPU path end to end (every method in bf16 and fp32, kill-and-resume, the benchmark) in
# under ten minutes; prints one table. Skipped, with a message, where CUDA is not available.
gpu-check:
	$(PYTHON) scripts/gpu_check.py --json docs/gpu_check.json

# docs/RESULTS.md's "Seeing adaptation": a source-only and a DANN run of 10,000 steps on
# MNIST→MNIST-M (data under $TRANSFERLAB_DATA), `python -m transferlab.analyze` on both, and
# copies of their analysis.json, confusion matrices and side-by-side t-SNE in docs/analysis/
# (scripts/results.py, run by `make reproduce`, reads them). Rerunning reuses finished runs.
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

# How well each validator chooses (docs/SELECTION.md; README, "Choosing without target labels"):
# on MNIST→MNIST-M with the DANN paper's settings, a DANN sweep (λ_max × learning rate × 3
# seeds, 18 runs) and an ADDA sweep (adaptation learning rate × 3 seeds, 9 runs; 10,000
# pretraining + 10,000 adaptation steps), evaluated every 1,000 steps with every validator; then
# every run × step is a candidate for `transferlab.select`. The grids are the papers' values and
# their neighbours, chosen without target labels (README). STUDY_ARGS go last, so e.g.
# STUDY_ARGS="data=tiny trainer.steps=300 trainer.eval_every=50" is a miniature of the study.
STUDY_DIR ?= multirun/selection
STUDY_BY ?= bnm
STUDY_ARGS ?=
STUDY_REPORT ?= docs
selection-study:
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=dann \
		method.lambda_max=0.1,0.3,1.0 trainer.optimizer.lr=0.003,0.01 seed=0,1,2 \
		trainer.eval_every=1000 trainer.progress_bar=false \
		hydra.sweep.dir=$(STUDY_DIR)/dann $(STUDY_ARGS)
	$(PYTHON) -m transferlab -m experiment=mnist_mnistm method=adda \
		method.adapt_optimizer.lr=2e-5,2e-4,2e-3 seed=0,1,2 \
		trainer.eval_every=1000 trainer.progress_bar=false \
		hydra.sweep.dir=$(STUDY_DIR)/adda $(STUDY_ARGS)
	$(PYTHON) -m transferlab.select $(STUDY_DIR) --by $(STUDY_BY) \
		--out $(STUDY_REPORT)/selection --markdown $(STUDY_REPORT)/SELECTION.md
