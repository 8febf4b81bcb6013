# MambaVL harness. The Makefile only wires the stages together; each stage is a
# `python -m <package>...` command documented in README.md.
#   make demo   # whole pipeline on the synthetic EK100-format dataset (offline)
#   make test   # test suite

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch is installed first so users pick their build: TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0

DATA ?= data/demo
ANNOTATIONS ?= $(DATA)/annotations
SPLIT ?= validation
MASK ?= paper
GENERATOR ?= template
SEED ?= 0
QUESTIONS ?= $(DATA)/questions/$(SPLIT)-$(GENERATOR)-$(MASK).jsonl
EK100_URL ?= https://raw.githubusercontent.com/epic-kitchens/epic-kitchens-100-annotations/master
EK100_FILES := EPIC_100_train.csv EPIC_100_validation.csv EPIC_100_test_timestamps.csv \
	EPIC_100_verb_classes.csv EPIC_100_noun_classes.csv EPIC_100_video_info.csv \
	EPIC_100_tail_verbs.csv EPIC_100_tail_nouns.csv \
	EPIC_100_unseen_participant_ids_validation.csv EPIC_100_unseen_participant_ids_test.csv

.PHONY: help venv test lint demo demo-data questions annotations clean

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

lint: venv ## ruff
	$(VENV)/bin/ruff check .

demo: venv demo-data ## whole pipeline on the synthetic dataset, offline
	$(MAKE) questions SPLIT=train
	$(MAKE) questions SPLIT=validation
	@echo "demo done: data in $(DATA)"

demo-data: venv ## generate the synthetic EK100-format dataset in $(DATA) (once)
	@test -f $(DATA)/annotations/EPIC_100_train.csv \
		|| $(PY) -m extract.synthetic --out $(DATA) --seed $(SEED)

questions: venv ## verb/noun questions of SPLIT (GENERATOR=template|llm|predictions MASK=paper|strict)
	$(PY) -m extract.questions --annotations $(ANNOTATIONS)/EPIC_100_$(SPLIT).csv \
		--generator $(GENERATOR) --mask $(MASK) --seed $(SEED) --out $(QUESTIONS)

annotations: ## download the official EK100 annotation CSVs into data/ek100/annotations
	mkdir -p data/ek100/annotations
	for f in $(EK100_FILES); do curl -fsSL -o data/ek100/annotations/$$f $(EK100_URL)/$$f; done

clean: ## remove generated data, runs and reports (keeps .venv)
	rm -rf data/demo runs mlruns mlruns.db reports/out
