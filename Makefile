# MambaVL harness. The Makefile only wires the stages together; each stage is a
# `python -m <package>...` command documented in README.md (`make help` lists targets).
#   make demo   # whole pipeline on the synthetic EK100-format dataset (offline, CPU)
#   make test   # test suite

PYTHON ?= python3
VENV ?= .venv
# PY=/path/to/python uses that interpreter as it is: `venv` then installs nothing (CI, conda)
PY ?= $(VENV)/bin/python
# Torch is installed first so users pick their build: TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0

# --- what to run on: every path below follows these -------------------------------------------
BACKBONE ?= demo
# demo: the synthetic dataset in data/demo; vitb/vitl/orvit: EK100 in data/ek100
DATA ?= $(if $(filter demo,$(BACKBONE)),data/demo,data/ek100)
ANNOTATIONS ?= $(DATA)/annotations
# EK100 videos (<participant>/videos/<video_id>.MP4, rgb_frames, or AVION's 15-s chunks)
VIDEOS ?= $(DATA)/videos
# AVION's EK100 fine-tuned weights for BACKBONE=vitb|vitl (README: Feature store and extraction)
CHECKPOINT ?=
# BACKBONE=orvit: ORViT's own feature dump (features.import), `%` replaced by the split name
# (dumps/orvit_%.h5); without `%` one dump keyed by narration id serves every split
SOURCE ?=
# training runs (one folder each), and the store folder under DATA/features (fusion.train's
# default: the data folder's name)
RUNS ?= runs
DATASET := $(notdir $(abspath $(DATA)))
FEATURES = $(DATA)/features/$(DATASET)
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
# generator=predictions|recognized: a predictions .npz of a recognition run
PREDICTIONS ?=
TEXT_PRESET ?= $(if $(filter demo,$(BACKBONE)),demo,roberta)
# Hugging Face name or folder; the text store is named after its last part
TEXT_MODEL ?= $(if $(filter demo,$(BACKBONE)),$(DATA)/tiny-roberta,roberta-base)
# training / sweeps
TRAIN_PRESET ?= $(if $(filter demo,$(BACKBONE)),demo$(if $(filter mamba,$(FUSION)),,-$(FUSION)),$(if $(filter mamba,$(FUSION)),mambavl,$(FUSION))-$(BACKBONE))
TRIALS ?= 50
# the demo's CPU-sized search space; EK100 sweeps use sweeps/spaces.yaml
SWEEP_SPACE ?= $(if $(filter demo,$(BACKBONE)),--space sweeps/spaces_demo.yaml)
WORKERS ?= 1
PARALLEL ?= 1
STUDY ?=
# extra flags of a one-stage target; the chains take them per stage (VIDEO_ARGS, TRAIN_ARGS, ...)
ARGS ?=
VIDEO_ARGS ?=
TEXT_EXTRA_ARGS ?=
TRAIN_ARGS ?=
PREDICT_ARGS ?=
MLFLOW_TRACKING_URI ?= sqlite:///mlruns.db
export MLFLOW_TRACKING_URI

EK100_URL ?= https://raw.githubusercontent.com/epic-kitchens/epic-kitchens-100-annotations/master
EK100_FILES := EPIC_100_train.csv EPIC_100_validation.csv EPIC_100_test_timestamps.csv \
	EPIC_100_verb_classes.csv EPIC_100_noun_classes.csv EPIC_100_video_info.csv \
	EPIC_100_tail_verbs.csv EPIC_100_tail_nouns.csv \
	EPIC_100_unseen_participant_ids_validation.csv EPIC_100_unseen_participant_ids_test.csv

.PHONY: help venv test test-gpu lint demo demo-data demo-train questions annotations extract \
	demo-features embed-text reencode train sources predict sweep tables evaluate submission \
	mlflow-ui bench-fusion bench-train clean check-annotations ek100-recognition ek100-anticipation \
	chain-files screenshots check-source

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

ifeq ($(PY),$(VENV)/bin/python)
venv: $(VENV)/.installed ## create .venv and install the project (TORCH=... picks the torch build)
else
venv: ; @: # PY= names another interpreter: it is used as it is, nothing is installed
endif

test: venv ## run the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest -q

# pytest-xdist workers of test-gpu: most of its time is Triton compiling kernels on the CPU
GPU_TEST_WORKERS ?= 8
test-gpu: venv ## only the GPU tests (on a CUDA machine with .[gpu] installed)
	$(PY) -m pytest -q -m gpu -n $(GPU_TEST_WORKERS)

lint: venv ## ruff
	$(PY) -m ruff check .

# --- the whole pipeline on the synthetic dataset ---------------------------------------------
DEMO_SWEEP = --fusion mamba --preset demo --study demo-mamba --trials 4 --epochs 8 \
	--startup-trials 2 --space sweeps/spaces_demo.yaml --enqueue-reference \
	--storage sqlite:///$(DATA)/sweeps.db --out $(RUNS)/demo-sweeps --device cpu

demo: venv demo-data ## whole pipeline on the synthetic dataset, offline: data → tables
	$(MAKE) --no-print-directory BACKBONE=demo DATA=data/demo demo-features
	$(MAKE) --no-print-directory BACKBONE=demo DATA=data/demo demo-train
	$(PY) -m sweeps $(DEMO_SWEEP)
	$(PY) -m extract.questions audit --train $(DATA)/questions/train-template-paper.jsonl \
		--eval $(DATA)/questions/validation-template-paper.jsonl --annotations $(DATA)/annotations \
		--json > $(DATA)/audit-template-paper.json
	$(PY) -m reports.tables --dataset synthetic-demo --audit $(DATA)/audit-template-paper.json
	@echo
	@echo "demo done. Features: data/demo/features  runs: $(RUNS)/  tables: reports/out/tables.md"
	@echo "  summary page: reports/out/index.html"
	@echo "  browse the runs: make mlflow-ui  (or: $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI))"

demo-data: venv ## generate the synthetic EK100-format dataset in data/demo (once)
	@test -f data/demo/annotations/EPIC_100_train.csv \
		|| $(PY) -m extract.synthetic --out data/demo --seed $(SEED)

demo-features: venv ## questions, tiny RoBERTa, video and text stores of the demo
	for s in $(SPLITS); do $(MAKE) --no-print-directory questions SPLIT=$$s || exit 1; done
	@test -f $(DATA)/tiny-roberta/config.json || $(PY) -m extract tiny-roberta --out $(DATA)/tiny-roberta
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

# --- one command per stage: the one-stage targets below and the chains share them -------------
# the annotation file of split $(1) (the test split has timestamps only)
split_csv = $(ANNOTATIONS)/EPIC_100_$(if $(filter test,$(1)),test_timestamps,$(1)).csv
# questions of split $(1) by generator $(2) into $(3); $(4): more flags
questions_cmd = $(PY) -m extract.questions --annotations $(call split_csv,$(1)) --generator $(2) \
	--mask $(MASK) --seed $(SEED) --out $(3) $(4)
# video features of split $(1) for task $(2); $(3): more flags
video_cmd = $(PY) -m extract video --preset $(BACKBONE) --split $(1) --task $(2) \
	--annotations $(ANNOTATIONS) --videos $(VIDEOS) --root $(DATA)/features --dataset $(DATASET) \
	$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(3)
# BACKBONE=orvit: video features of split $(1), clips of task $(2), imported from SOURCE's dump
# (store video-orvit, what the mambavl-orvit presets read); $(3): more flags
import_cmd = $(PY) -m features.import --backbone orvit --task $(2) \
	--source $(subst %,$(1),$(SOURCE)) --annotations $(ANNOTATIONS) --split $(1) \
	--root $(DATA)/features --dataset $(DATASET) $(3)
NO_SOURCE = echo "error: BACKBONE=orvit imports ORViT's dumped features: pass SOURCE=dump.h5" \
	"(one dump keyed by narration id, every split) or SOURCE=dumps/orvit_%.h5 (% becomes the" \
	"split name)" >&2; exit 2
# question embeddings of split $(1) from questions file $(2), PROTOCOL's text store; $(3): more flags
text_cmd = $(PY) -m extract text --preset $(TEXT_PRESET) --split $(1) --questions $(2) \
	--text-model $(TEXT_MODEL) --annotations $(ANNOTATIONS) --root $(DATA)/features \
	--dataset $(DATASET) $(TEXT_ARGS_$(PROTOCOL)) $(3)
# one training run: preset $(1), task $(2); $(3): more flags
train_cmd = $(PY) -m fusion.train --preset $(1) --task $(2) --seed $(SEED) --protocol $(PROTOCOL) \
	--data $(DATA) --out $(RUNS) $(3)
# the demo presets name the recognition store (vit-demo); anticipation reads its own
ANTICIPATION_STORE = $(if $(filter demo,$(BACKBONE)),--video-store vit-demo-anticipation)

# each protocol's text readout (fusion/protocols.py), named in the store, read by fusion.train;
# the suffix is the store name's part for it (extract.run.text_suffix; tests/test_chain.py checks).
# authors: the Mamba head reads the embedding layer, their baselines (FUSION=mlp|transformer_*)
# RoBERTa's pooler output; `make embed-text` writes the store of each FUSION in TEXT_FUSIONS_*
AUTHORS_BASELINE = $(filter mlp transformer_6x4 transformer_12x12,$(FUSION))
TEXT_ARGS_clean =
TEXT_ARGS_paper = --max-length 40
TEXT_ARGS_authors = --readout $(if $(AUTHORS_BASELINE),pooler,embeddings) --init authors-random \
	--seed 0 --padding max-length --max-length 40
TEXT_SUFFIX_clean =
TEXT_SUFFIX_paper = -len40
TEXT_SUFFIX_authors = -$(if $(AUTHORS_BASELINE),pooler,emb)-authorsrandom-s0-len40-nomask
TEXT_FUSIONS_authors = mamba mlp
TEXT_STORE_FUSIONS = $(or $(TEXT_FUSIONS_$(PROTOCOL)),$(FUSION))

# --- stages, one at a time (each runs its command; the command resumes or refuses by itself) ----
questions: venv ## questions of SPLIT (GENERATOR=template|llm|predictions|recognized [PREDICTIONS=p.npz] MASK=paper|strict)
	$(call questions_cmd,$(SPLIT),$(GENERATOR),$(QUESTIONS),$(if $(PREDICTIONS),--predictions $(PREDICTIONS)) $(ARGS))

annotations: ## download the official EK100 annotation CSVs into ANNOTATIONS (default data/ek100/annotations)
	mkdir -p $(ANNOTATIONS)
	for f in $(EK100_FILES); do curl -fsSL -o $(ANNOTATIONS)/$$f $(EK100_URL)/$$f || exit 1; done

extract: venv ## video features of SPLITS (BACKBONE=demo|vitb|vitl [CHECKPOINT=] [VIDEOS=]; orvit: SOURCE=dump.h5)
ifeq ($(BACKBONE),orvit)
	@test -n "$(SOURCE)" || { $(NO_SOURCE); }
	for s in $(SPLITS); do $(call import_cmd,$$s,$(TASK),$(ARGS)) || exit 1; done
else
	for s in $(SPLITS); do $(call video_cmd,$$s,$(TASK),$(ARGS)) || exit 1; done
endif

reencode: venv ## AVION's 320p/30fps/15-s chunked copy of raw videos (VIDEOS= OUT= WORKERS=; resumable)
	$(PY) -m extract.reencode --videos $(VIDEOS) --out $(OUT) --workers $(WORKERS) $(ARGS)

# (foreach rebinds FUSION while it expands text_cmd: one store per readout of the protocol)
embed-text: venv ## question embeddings of SPLITS for PROTOCOL, every head's store (run `make questions` first)
	for s in $(SPLITS); do \
		test -f $(DATA)/questions/$$s-$(GENERATOR)-$(MASK).jsonl || { echo "error:" \
			"$(DATA)/questions/$$s-$(GENERATOR)-$(MASK).jsonl: not found; run make questions" \
			"SPLIT=$$s GENERATOR=$(GENERATOR) MASK=$(MASK) first" >&2; exit 2; }; \
		$(foreach FUSION,$(TEXT_STORE_FUSIONS),$(call text_cmd,$$s,$(call \
			questions_file,$$s,$(GENERATOR)),$(ARGS)) || exit 1;) \
	done

train: venv ## train one head (FUSION=mamba|mlp|transformer_6x4|transformer_12x12 BACKBONE= TASK= PROTOCOL=)
	$(call train_cmd,$(TRAIN_PRESET),$(TASK),$(if $(filter anticipation,$(TASK)),$(ANTICIPATION_STORE)) $(ARGS))

sources: venv ## the Mamba head on the video alone and on the questions alone (beside make train; PROTOCOL=)
	$(MAKE) --no-print-directory train FUSION=mamba ARGS="--questions none $(ARGS)"
	$(MAKE) --no-print-directory train FUSION=mamba \
		ARGS="--video none $(if $(filter clean,$(PROTOCOL)),,--mixup-alpha 0) $(ARGS)"

predict: venv ## a run's predictions for SPLIT into RUN/predictions_SPLIT.npz (RUN= SPLIT=test for a submission)
	$(PY) -m fusion.predict --run $(RUN) --split $(SPLIT) $(ARGS)

sweep: venv ## Optuna sweep of a head (FUSION= TRIALS=50 WORKERS=1 PARALLEL=1 STUDY= BACKBONE= TASK=)
	$(PY) -m sweeps --fusion $(FUSION) --preset $(TRAIN_PRESET) --task $(TASK) --trials $(TRIALS) \
		--workers $(WORKERS) --parallel $(PARALLEL) $(if $(STUDY),--study $(STUDY)) \
		--data $(DATA) $(SWEEP_SPACE) $(ARGS)

tables: venv ## the paper's four tables, plots and index.html from MLflow into reports/out
	$(PY) -m reports.tables $(ARGS)

evaluate: venv ## score PREDICTIONS (.npz, C1 .pkl/.pt, challenge .json/.zip) on SPLIT
	$(PY) -m fusion.evaluate --predictions $(PREDICTIONS) --task $(TASK) \
		--annotations $(call split_csv,$(SPLIT)) $(ARGS)

submission: venv ## challenge file of PREDICTIONS on SPLIT=test into OUT (.zip recognition, .json anticipation)
	$(PY) -m fusion.export --predictions $(PREDICTIONS) --task $(TASK) --format submission \
		--annotations $(call split_csv,$(SPLIT)) --out $(OUT) $(ARGS)

screenshots: venv ## PNGs of reports/out/index.html and CONSOLE=transcript into docs/screenshots (needs chromium)
	$(PY) -m reports.screenshots --page reports/out/index.html $(if $(CONSOLE),--console $(CONSOLE)) \
		--out docs/screenshots

mlflow-ui: venv ## browse runs at http://127.0.0.1:5000
	$(PY) -m mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)

bench-fusion: venv ## fusion heads: time and memory vs sequence length (GPU)
	$(PY) benchmarks/fusion_heads.py $(ARGS)

bench-train: venv ## seconds per epoch of each head on EK100-sized random features (GPU)
	$(PY) benchmarks/train_epoch.py $(ARGS)

clean: ## remove generated demo data, runs and reports (keeps .venv and data/ek100)
	rm -rf data/demo runs mlruns mlruns.db mlruns.db.lock mlartifacts reports/out

# --- the EK100 chains ---------------------------------------------------------------------------
# Every stage writes one file and reads what the stage before wrote; make skips a stage whose
# file is there and newer than its inputs (delete the file, or `make -B FILE`, to redo it;
# `make chain-files` lists them). Per-stage flags: VIDEO_ARGS, TEXT_EXTRA_ARGS, TRAIN_ARGS,
# PREDICT_ARGS. The test split has no labels, so its questions (recognition) and every split's
# anticipation questions come from SOURCE_RUN, the Mamba head on the video alone, never from
# labels: its predictions of the clip itself (generator recognized) or of the observed window
# before the action (generator predictions).
# the chains' files are kept when make built them on the way (never removed as intermediates)
.SECONDARY:
PROTOCOL_SUFFIX = $(if $(filter clean,$(PROTOCOL)),,-$(PROTOCOL))
VIDEO_NAME = $(if $(filter demo,$(BACKBONE)),vit-demo,$(BACKBONE))
SOURCE_PRESET = $(if $(filter demo,$(BACKBONE)),demo,mambavl-$(BACKBONE))
SOURCE_RUN = $(RUNS)/mamba-$(BACKBONE)-recognition$(PROTOCOL_SUFFIX)-video-s$(SEED)
RECOGNITION_RUN = $(RUNS)/$(FUSION)-$(BACKBONE)-recognition$(PROTOCOL_SUFFIX)-s$(SEED)
ANTICIPATION_RUN = $(RUNS)/$(FUSION)-$(BACKBONE)-anticipation$(PROTOCOL_SUFFIX)-s$(SEED)
CHAIN_ANNOTATIONS = EPIC_100_train.csv EPIC_100_validation.csv EPIC_100_test_timestamps.csv \
	EPIC_100_verb_classes.csv EPIC_100_noun_classes.csv
# files: questions of split $(1) by generator $(2); the reports `extract` writes when a store of
# split $(1) is done (video: $(2) = "" or -anticipation; text: $(2) = the questions' generator)
questions_file = $(DATA)/questions/$(1)-$(2)-$(MASK).jsonl
video_report = $(FEATURES)/$(1)/video-$(VIDEO_NAME)$(2).failures.json
text_name = $(notdir $(TEXT_MODEL))-$(1)-$(MASK)$(TEXT_SUFFIX_$(PROTOCOL))
text_report = $(FEATURES)/$(1)/text-$(call text_name,$(2)).failures.json
TINY_ROBERTA = $(if $(filter demo,$(BACKBONE)),$(DATA)/tiny-roberta/config.json)
# the checks the chains' first stages wait for; BACKBONE=orvit: the recognition video stores
# still to import (from SOURCE), the observed-window stores not imported yet (by hand)
CHAIN_CHECKS = check-annotations $(if $(filter orvit,$(BACKBONE)),check-source)
missing_files = $(filter-out $(wildcard $(1)),$(1))
ORVIT_MISSING = $(if $(filter orvit,$(BACKBONE)),$(call missing_files,$(foreach \
	s,train validation test,$(call video_report,$(s)))))
ORVIT_OBSERVED_MISSING = $(if $(filter orvit,$(BACKBONE)),$(call missing_files,$(foreach \
	s,train validation test,$(call video_report,$(s),-anticipation))))
# every stage's file, in chain order (`make chain-files` lists them)
RECOGNITION_STAGES = $(foreach s,train validation,$(call questions_file,$(s),template)) \
	$(TINY_ROBERTA) $(foreach s,train validation test,$(call video_report,$(s))) \
	$(foreach s,train validation,$(call text_report,$(s),template)) \
	$(RECOGNITION_RUN)/history.csv $(RECOGNITION_RUN)/predictions_validation.npz \
	$(RECOGNITION_RUN)/evaluation_validation.json $(SOURCE_RUN)/history.csv \
	$(SOURCE_RUN)/predictions_validation.npz $(call questions_file,validation,recognized) \
	$(call text_report,validation,recognized) \
	$(RECOGNITION_RUN)/evaluation_validation_recognized.json \
	$(SOURCE_RUN)/predictions_test.npz $(call questions_file,test,recognized) \
	$(call text_report,test,recognized) $(RECOGNITION_RUN)/predictions_test.npz \
	$(RECOGNITION_RUN)/submission.zip
ANTICIPATION_STAGES = $(SOURCE_RUN)/history.csv \
	$(foreach s,train validation test,$(call video_report,$(s),-anticipation)) \
	$(foreach s,train validation test,$(SOURCE_RUN)/observed_$(s).npz) \
	$(foreach s,train validation test,$(call questions_file,$(s),predictions)) $(TINY_ROBERTA) \
	$(foreach s,train validation test,$(call text_report,$(s),predictions)) \
	$(ANTICIPATION_RUN)/history.csv $(ANTICIPATION_RUN)/predictions_validation.npz \
	$(ANTICIPATION_RUN)/evaluation_validation.json $(ANTICIPATION_RUN)/predictions_test.npz \
	$(ANTICIPATION_RUN)/submission.json

ek100-recognition: $(RECOGNITION_STAGES) ## annotations → questions → video, text features → train → evaluate → test predictions → submission.zip
	@echo "recognition chain done. Validation metrics: $(RECOGNITION_RUN)/evaluation_validation.json"
	@echo "  with questions written as the test split's are (from predictions, what the"
	@echo "  submission will score like): $(RECOGNITION_RUN)/evaluation_validation_recognized.json"
	@echo "  challenge file: $(RECOGNITION_RUN)/submission.zip  (make chain-files lists every stage's file)"

ek100-anticipation: $(or $(firstword $(ORVIT_OBSERVED_MISSING)),$(ANTICIPATION_STAGES)) ## observed-window predictions → questions → features → train → evaluate → submission.json
	@echo "anticipation chain done. Validation metrics: $(ANTICIPATION_RUN)/evaluation_validation.json"
	@echo "  challenge file: $(ANTICIPATION_RUN)/submission.json  (make chain-files lists every stage's file)"

chain-files: ## each chain stage's file, in order, and whether it is there (delete one to redo its stage)
	@for f in $(RECOGNITION_STAGES) -- $(ANTICIPATION_STAGES); do \
		if [ "$$f" = -- ]; then echo "anticipation:"; continue; fi; \
		[ -e "$$f" ] && echo "  done     $$f" || echo "  pending  $$f"; \
	done | { echo "recognition:"; cat; }

# BACKBONE=orvit: the chain's first stages stop at once without SOURCE while a video store is missing
check-source:
	@test -n "$(SOURCE)" || test -z "$(ORVIT_MISSING)" || { $(NO_SOURCE); }

check-annotations: ## the annotation files the chains read are in ANNOTATIONS
	@for f in $(CHAIN_ANNOTATIONS); do test -f $(ANNOTATIONS)/$$f || { echo "error:" \
		"$(ANNOTATIONS)/$$f: not found; run make annotations, or point ANNOTATIONS= at your copy" \
		>&2; exit 2; }; done
	@test -e $(DATA)/annotations || { echo "error: $(DATA)/annotations: not found; fusion.train" \
		"reads the annotations there: ln -s $(abspath $(ANNOTATIONS)) $(DATA)/annotations" >&2; \
		exit 2; }

$(call questions_file,%,template): | $(CHAIN_CHECKS) venv
	$(call questions_cmd,$*,template,$@)

$(call questions_file,%,recognized): $(SOURCE_RUN)/predictions_%.npz | venv
	$(call questions_cmd,$*,recognized,$@,--predictions $<)

$(call questions_file,%,predictions): $(SOURCE_RUN)/observed_%.npz | venv
	$(call questions_cmd,$*,predictions,$@,--predictions $<)

$(TINY_ROBERTA): | venv
	$(PY) -m extract tiny-roberta --out $(@D)

ifeq ($(BACKBONE),orvit)
$(call video_report,%): | $(CHAIN_CHECKS) venv
	$(call import_cmd,$*,recognition,$(VIDEO_ARGS))

# ORViT's dumps hold the action segments, not the observed windows before them: the anticipation
# stores are imported by hand (the error says how); until all three are there the chain stops at
# once (ek100-anticipation then waits for the first missing one only)
$(call video_report,%,-anticipation):
	@echo "error: $(@:.failures.json=.zarr): not found; ORViT's dumps (SOURCE) hold features of" \
		"the action segments, anticipation reads the observed window (the 2 s ending 1 s before" \
		"each action): dump ORViT's features of those windows and import each split (train," \
		"validation, test), e.g. python -m features.import --backbone orvit --name" \
		"$(VIDEO_NAME)-anticipation --task anticipation --source WINDOWS_DUMP --annotations" \
		"$(ANNOTATIONS) --split $* --root $(DATA)/features --dataset $(DATASET) --allow-missing;" \
		"then rerun" >&2; exit 2
else
$(call video_report,%): | $(CHAIN_CHECKS) venv
	$(call video_cmd,$*,recognition,$(VIDEO_ARGS))

# an observed window wholly before its video's start was never filmed: listed in the report
$(call video_report,%,-anticipation): | $(CHAIN_CHECKS) venv
	$(call video_cmd,$*,anticipation,--allow-missing $(VIDEO_ARGS))
endif

define text_rule
$(call text_report,%,$(1)): $(call questions_file,%,$(1)) $(TINY_ROBERTA) | venv
	$$(call text_cmd,$$*,$$<,$$(TEXT_EXTRA_ARGS))
endef
$(foreach generator,template recognized predictions,$(eval $(call text_rule,$(generator))))

$(SOURCE_RUN)/history.csv: $(call video_report,train) $(call video_report,validation) | venv
	$(call train_cmd,$(SOURCE_PRESET),recognition,--run-name $(notdir $(@D)) --questions none $(TRAIN_ARGS))

$(RECOGNITION_RUN)/history.csv: $(foreach s,train validation,$(call video_report,$(s)) \
		$(call text_report,$(s),template)) | venv
	$(call train_cmd,$(TRAIN_PRESET),recognition,--run-name $(notdir $(@D)) $(TRAIN_ARGS))

$(ANTICIPATION_RUN)/history.csv: $(foreach s,train validation,\
		$(call video_report,$(s),-anticipation) $(call text_report,$(s),predictions)) | venv
	$(call train_cmd,$(TRAIN_PRESET),anticipation,--run-name $(notdir $(@D)) \
		$(ANTICIPATION_STORE) $(TRAIN_ARGS))

# the question source's predictions of split S's clips, and of the windows before its actions;
# a window never filmed gets the train split's class prior (--failed prior, counted on stderr)
$(SOURCE_RUN)/predictions_%.npz: $(SOURCE_RUN)/history.csv $(call video_report,%) | venv
	$(PY) -m fusion.predict --run $(@D) --split $* --out $@ $(PREDICT_ARGS)

$(SOURCE_RUN)/observed_%.npz: $(SOURCE_RUN)/history.csv $(call video_report,%,-anticipation) | venv
	$(PY) -m fusion.predict --run $(@D) --split $* --video-store $(VIDEO_NAME)-anticipation \
		--failed prior --out $@ $(PREDICT_ARGS)

# a run's validation metrics and its challenge file ($(1) run, $(2) task, $(3) file): predictions
# of every segment (the evaluator scores the whole split; a clip that failed extraction gets
# the train split's class prior, --failed prior, counted on stderr)
define score_rules
$(1)/evaluation_validation.json: $(1)/predictions_validation.npz | venv
	$$(PY) -m fusion.evaluate --predictions $$< --task $(2) \
		--annotations $$(call split_csv,validation) --json > $$@.tmp
	mv $$@.tmp $$@
$(1)/$(3): $(1)/predictions_test.npz | venv
	$$(PY) -m fusion.export --predictions $$< --task $(2) --format submission \
		--annotations $$(call split_csv,test) --out $$@ --force
endef
$(eval $(call score_rules,$(RECOGNITION_RUN),recognition,submission.zip))
$(eval $(call score_rules,$(ANTICIPATION_RUN),anticipation,submission.json))

$(RECOGNITION_RUN)/predictions_validation.npz: $(RECOGNITION_RUN)/history.csv \
		$(call video_report,validation) $(call text_report,validation,template) | venv
	$(PY) -m fusion.predict --run $(@D) --split validation --failed prior --out $@ $(PREDICT_ARGS)

# validation scored as the test split will be: questions from the question source's predictions
# (generator recognized), not from the labels the paper's questions are written from
$(RECOGNITION_RUN)/predictions_validation_recognized.npz: $(RECOGNITION_RUN)/history.csv \
		$(call video_report,validation) $(call text_report,validation,recognized) | venv
	$(PY) -m fusion.predict --run $(@D) --split validation --text-store \
		$(call text_name,recognized) --failed prior --out $@ $(PREDICT_ARGS)

$(RECOGNITION_RUN)/evaluation_validation_recognized.json: \
		$(RECOGNITION_RUN)/predictions_validation_recognized.npz | venv
	$(PY) -m fusion.evaluate --predictions $< --task recognition \
		--annotations $(call split_csv,validation) --json > $@.tmp
	mv $@.tmp $@

# the test split's questions come from the question source's predictions (generator recognized)
$(RECOGNITION_RUN)/predictions_test.npz: $(RECOGNITION_RUN)/history.csv $(call video_report,test) \
		$(call text_report,test,recognized) | venv
	$(PY) -m fusion.predict --run $(@D) --split test --text-store $(call text_name,recognized) \
		--out $@ $(PREDICT_ARGS)

$(ANTICIPATION_RUN)/predictions_%.npz: $(ANTICIPATION_RUN)/history.csv \
		$(call video_report,%,-anticipation) $(call text_report,%,predictions) | venv
	$(PY) -m fusion.predict --run $(@D) --split $* --failed prior --out $@ $(PREDICT_ARGS)
