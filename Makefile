# msapp: `make serve` serves the demo studies, `make test` runs the whole test suite.
# Both create (or reuse) the pinned environment first; see scripts/bootstrap.sh.

PY       := .venv/bin/python
HOST     ?= 127.0.0.1
PORT     ?= 8000
DEMO     ?= demo/studies
CONF     ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv demo serve test test-gpu lint bench pretrain evaluate clean-demo

venv:
	@bash scripts/bootstrap.sh

$(DEMO)/.complete: | venv
	PYTHONPATH=lib $(PY) -m mslesion.phantoms --out $(DEMO) --truth demo/ground_truth --cohort ms --subjects 6 --sessions 2 \
		--labelled 0.34 --seed 2026
	touch $@

demo: $(DEMO)/.complete

serve: venv demo
	PYTHONPATH=lib $(PY) -m monailabel.main start_server --app apps/msapp --studies $(DEMO) \
		--host $(HOST) --port $(PORT) $(CONF)

# OHIF: a local Orthanc (Debian packages orthanc, orthanc-dicomweb) with the demo studies, msapp on DICOMweb;
# open http://$(HOST):$(PORT)/ohif/ (docs/ohif.md)
ORTHANC_PORT ?= 8042
serve-ohif: venv demo
	PYTHONPATH=lib $(PY) -m mslesion.dev.serve --studies $(DEMO) --orthanc demo/orthanc --orthanc-port $(ORTHANC_PORT) \
		--host $(HOST) --port $(PORT) -- $(CONF)

test: venv
	PYTHONPATH=lib $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check lib apps tests bench

# per task REST latency (median, p95), server stage timings, peak memory, fine-tuning patches/s; see docs/performance.md
bench: venv
	PYTHONPATH=lib $(PY) -m bench.latency $(BENCH_ARGS)

# CUDA answers against CPU answers for every task (skipped without a GPU; CI stays CPU-only)
test-gpu: venv
	PYTHONPATH=lib $(PY) -m pytest -m gpu tests/test_gpu.py $(PYTEST_ARGS)

# long, resumable, domain-randomised pretraining (runs/ is git-ignored; re-running resumes from its checkpoint)
BUDGET_MIN ?= 120
pretrain: venv
	PYTHONPATH=lib $(PY) -m mslesion.pretrain flair_lesion --budget-min $(BUDGET_MIN) --run-dir runs/flair_lesion --threads 1
	PYTHONPATH=lib $(PY) -m mslesion.pretrain enhancement --budget-min $(BUDGET_MIN) --run-dir runs/enhancement --threads 1
	PYTHONPATH=lib $(PY) -m mslesion.pretrain new_lesion --budget-min $(BUDGET_MIN) --run-dir runs/new_lesion --threads 1 \
		--init-from model/flair_lesion.pt
	PYTHONPATH=lib $(PY) -m mslesion.enhancement_prediction.pretrain

# pooled lesion-wise scores of a task's weights on the shifted test split, per acquisition variant
TASK ?= flair_lesion
evaluate: venv
	PYTHONPATH=lib $(PY) -m mslesion.evaluate $(TASK)

clean-demo:
	rm -rf demo
