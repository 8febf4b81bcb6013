# MambaVL harness. The Makefile only wires the stages together; each stage is a
# `python -m <package>...` command documented in README.md (`make help` lists targets).
#   make demo   # whole pipeline on the synthetic EK100-format dataset (offline, CPU)
#   make test   # test suite

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch is installed first so users pick their build: TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0

# --- what to run on ------------------------------------------------------------------------
BACKBONE ?= demo
# demo: the synthetic dataset in data/demo; vitb/vitl/orvit: EK100 in data/ek100
DATA ?= $(if $(filter demo,$(BACKBONE)),data/demo,data/ek100)
ANNOTATIONS ?= $(DATA)/annotations
SPLIT ?= validation
SPLITS ?= train validation
TASK ?= recognition
FUSION ?= mamba
# authors | paper | clean (fusion/protocols.py): the released code, the paper's text, our default
PROTOCOL ?= clean
SEED ?= 0
# questions (the text model's store name follows generator and mask)
MASK ?= paper
GENERATOR ?= $(if $(filter anticipation,$(TASK)),predictions,template)
QUESTIONS ?= $(DATA)/questions/$(SPLIT)-$(GENERATOR)-$(MASK).jsonl
TEXT_PRESET ?= $(if $(filter demo,$(BACKBONE)),demo,roberta)
# training / sweeps
TRAIN_PRESET ?= $(if $(filter demo,$(BACKBONE)),demo$(if $(filter mamba,$(FUSION)),,-$(FUSION)),$(if $(filter mamba,$(FUSION)),mambavl,$(FUSION))-$(BACKBONE))
TRIALS ?= 50
# the demo's CPU-sized search space; EK100 sweeps use sweeps/spaces.yaml
SWEEP_SPACE ?= $(if $(filter demo,$(BACKBONE)),--space sweeps/spaces_demo.yaml)
WORKERS ?= 1
PARALLEL ?= 1
STUDY ?=
ARGS ?=
MLFLOW_TRACKING_URI ?= sqlite:///mlruns.db
export MLFLOW_TRACKING_URI

EK100_URL ?= https://raw.githubusercontent.com/epic-kitchens/epic-kitchens-100-annotations/master
EK100_FILES := EPIC_100_train.csv EPIC_100_validation.csv EPIC_100_test_timestamps.csv \
	EPIC_100_verb_classes.csv EPIC_100_noun_classes.csv EPIC_100_video_info.csv \
	EPIC_100_tail_verbs.csv EPIC_100_tail_nouns.csv \
	EPIC_100_unseen_participant_ids_validation.csv EPIC_100_unseen_participant_ids_test.csv

.PHONY: help venv test test-gpu lint demo demo-data demo-train questions annotations extract \
	demo-features embed-text reencode train sources predict sweep tables evaluate submission mlflow-ui bench-fusion bench-train clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed ## create .venv and install the project (TORCH=... picks the torch build)

test: venv ## run the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest -q

test-gpu: venv ## only the GPU tests (on a CUDA machine with .[gpu] installed)
	$(PY) -m pytest -q -m gpu

lint: venv ## ruff
	$(VENV)/bin/ruff check .

# --- the whole pipeline on the synthetic dataset ---------------------------------------------
DEMO_SWEEP = --fusion mamba --preset demo --study demo-mamba --trials 4 --epochs 8 \
	--startup-trials 2 --space sweeps/spaces_demo.yaml --enqueue-reference \
	--storage sqlite:///$(DATA)/sweeps.db --out runs/demo-sweeps --device cpu

demo: venv demo-data ## whole pipeline on the synthetic dataset, offline: data → tables
	$(MAKE) --no-print-directory BACKBONE=demo DATA=data/demo demo-features
	$(MAKE) --no-print-directory BACKBONE=demo DATA=data/demo demo-train
	$(PY) -m sweeps $(DEMO_SWEEP)
	$(PY) -m extract.questions audit --train $(DATA)/questions/train-template-paper.jsonl \
		--eval $(DATA)/questions/validation-template-paper.jsonl --annotations $(DATA)/annotations \
		--json > $(DATA)/audit-template-paper.json
	$(PY) -m reports.tables --dataset synthetic-demo --audit $(DATA)/audit-template-paper.json
	@echo
	@echo "demo done. Features: data/demo/features  runs: runs/  tables: reports/out/tables.md"
	@echo "  summary page: reports/out/index.html"
	@echo "  browse the runs: make mlflow-ui  (or: $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI))"

demo-data: venv ## generate the synthetic EK100-format dataset in data/demo (once)
	@test -f data/demo/annotations/EPIC_100_train.csv \
		|| $(PY) -m extract.synthetic --out data/demo --seed $(SEED)

demo-features: venv ## questions, tiny RoBERTa, video and text stores of the demo
	for s in $(SPLITS); do $(MAKE) --no-print-directory questions SPLIT=$$s || exit 1; done
	@test -f data/demo/tiny-roberta/config.json || $(PY) -m extract tiny-roberta --out data/demo/tiny-roberta
	$(MAKE) --no-print-directory extract
	for p in clean paper authors; do \
		$(MAKE) --no-print-directory embed-text PROTOCOL=$$p || exit 1; done

demo-train: venv ## the four heads, the Mamba head under the authors'/paper's protocols, video alone
	for f in mamba mlp transformer_6x4 transformer_12x12; do \
		$(MAKE) --no-print-directory train FUSION=$$f || exit 1; done
	$(MAKE) --no-print-directory train FUSION=mamba PROTOCOL=paper
	# the authors' head has no video projection: its width is the video's (128 for vit-demo)
	$(MAKE) --no-print-directory train FUSION=mamba PROTOCOL=authors ARGS="--head.d-model 128"
	$(MAKE) --no-print-directory train FUSION=mlp ARGS="--questions none"
	$(MAKE) --no-print-directory sources

# --- stages -----------------------------------------------------------------------------------
questions: venv ## verb/noun questions of SPLIT (GENERATOR=template|llm|predictions MASK=paper|strict)
	$(PY) -m extract.questions --annotations $(ANNOTATIONS)/EPIC_100_$(SPLIT).csv \
		--generator $(GENERATOR) --mask $(MASK) --seed $(SEED) --out $(QUESTIONS)

annotations: ## download the official EK100 annotation CSVs into data/ek100/annotations
	mkdir -p data/ek100/annotations
	for f in $(EK100_FILES); do curl -fsSL -o data/ek100/annotations/$$f $(EK100_URL)/$$f; done

extract: venv ## video features of SPLITS (BACKBONE=demo|vitb|vitl [CHECKPOINT=] [VIDEOS=]; orvit: SOURCE=dump.h5)
ifeq ($(BACKBONE),orvit)
	for s in $(SPLITS); do $(PY) -m features.import --backbone orvit --source $(SOURCE) \
		--annotations $(ANNOTATIONS) --split $$s $(ARGS) || exit 1; done
else
	for s in $(SPLITS); do $(PY) -m extract video --preset $(BACKBONE) --split $$s --task $(TASK) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(VIDEOS),--videos $(VIDEOS)) \
		$(ARGS) || exit 1; done
endif

reencode: venv ## AVION's 320p/30fps/15-s chunked copy of raw videos (VIDEOS= OUT= WORKERS=; resumable)
	$(PY) -m extract.reencode --videos $(VIDEOS) --out $(OUT) --workers $(WORKERS) $(ARGS)

# each protocol's text readout (fusion/protocols.py), named in the store, read by fusion.train
TEXT_ARGS_clean =
TEXT_ARGS_paper = --max-length 40
TEXT_ARGS_authors = --readout embeddings --init authors-random --seed 0 --padding max-length \
	--max-length 40

embed-text: venv ## question embeddings of SPLITS for PROTOCOL (run `make questions` first)
	for s in $(SPLITS); do $(PY) -m extract text --preset $(TEXT_PRESET) --split $$s \
		--questions $(DATA)/questions/$$s-$(GENERATOR)-$(MASK).jsonl \
		$(TEXT_ARGS_$(PROTOCOL)) || exit 1; done

train: venv ## train one head (FUSION=mamba|mlp|transformer_6x4|transformer_12x12 BACKBONE= TASK= PROTOCOL=)
	$(PY) -m fusion.train --preset $(TRAIN_PRESET) --task $(TASK) --seed $(SEED) \
		--protocol $(PROTOCOL) $(ARGS)

sources: venv ## the Mamba head on the video alone and on the questions alone (beside make train; PROTOCOL=)
	$(MAKE) --no-print-directory train FUSION=mamba ARGS="--questions none $(ARGS)"
	$(MAKE) --no-print-directory train FUSION=mamba \
		ARGS="--video none $(if $(filter clean,$(PROTOCOL)),,--mixup-alpha 0) $(ARGS)"

predict: venv ## a run's predictions for SPLIT into RUN/predictions_SPLIT.npz (RUN= SPLIT=test for a submission)
	$(PY) -m fusion.predict --run $(RUN) --split $(SPLIT) $(ARGS)

sweep: venv ## Optuna sweep of a head (FUSION= TRIALS=50 WORKERS=1 PARALLEL=1 STUDY= BACKBONE= TASK=)
	$(PY) -m sweeps --fusion $(FUSION) --preset $(TRAIN_PRESET) --task $(TASK) --trials $(TRIALS) \
		--workers $(WORKERS) --parallel $(PARALLEL) $(if $(STUDY),--study $(STUDY)) \
		$(SWEEP_SPACE) $(ARGS)

tables: venv ## the paper's four tables, plots and index.html from MLflow into reports/out
	$(PY) -m reports.tables $(ARGS)

evaluate: venv ## score PREDICTIONS (.npz, C1 .pkl/.pt, challenge .json/.zip) on SPLIT
	$(PY) -m fusion.evaluate --predictions $(PREDICTIONS) --task $(TASK) \
		--annotations $(ANNOTATIONS)/EPIC_100_$(SPLIT).csv

submission: venv ## challenge file from PREDICTIONS into OUT (.zip recognition, .json anticipation)
	$(PY) -m fusion.export --predictions $(PREDICTIONS) --task $(TASK) --format submission \
		--out $(OUT) $(ARGS)

mlflow-ui: venv ## browse runs at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)

bench-fusion: venv ## fusion heads: time and memory vs sequence length (GPU)
	$(PY) benchmarks/fusion_heads.py $(ARGS)

bench-train: venv ## seconds per epoch of each head on EK100-sized random features (GPU)
	$(PY) benchmarks/train_epoch.py $(ARGS)

clean: ## remove generated demo data, runs and reports (keeps .venv and data/ek100)
	rm -rf data/demo runs mlruns mlruns.db reports/out
