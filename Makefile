# msapp: `make serve` serves the demo studies, `make test` runs the whole test suite.
# Both create (or reuse) the pinned environment first; see scripts/bootstrap.sh.

PY       := .venv/bin/python
HOST     ?= 127.0.0.1
PORT     ?= 8000
DEMO     ?= demo/studies
CONF     ?=
PYTEST_ARGS ?=

.PHONY: venv demo serve test lint bench pretrain clean-demo

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

test: venv
	PYTHONPATH=lib $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check lib apps tests bench

bench: venv
	PYTHONPATH=lib $(PY) -m bench.flair_lesion

pretrain: venv
	PYTHONPATH=lib $(PY) -m mslesion.pretrain flair_lesion
	PYTHONPATH=lib $(PY) -m mslesion.pretrain new_lesion --init-from model/flair_lesion.pt
	PYTHONPATH=lib $(PY) -m mslesion.pretrain enhancement --init-from model/flair_lesion.pt
	PYTHONPATH=lib $(PY) -m mslesion.enhancement_prediction.pretrain

clean-demo:
	rm -rf demo
