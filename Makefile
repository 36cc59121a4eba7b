# The two set-up commands (see README):  make demo   |   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The demo uses every visible GPU, or 2 CPU processes when there is none.
NPROC   ?= $(shell $(BIN)/python -c "import torch; print(torch.cuda.device_count() or 2)" 2>/dev/null || echo 2)

.PHONY: install demo test test-full test-families lint schema clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt requirements-cuda.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build these machines hold offline, never an unpinned CUDA download.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet $$(grep -vE '^(#|deepspeed|$$)' requirements-lock.txt)
	# deepspeed ships only a source archive whose build imports torch: build it against the torch above.
	$(BIN)/pip install --quiet --no-build-isolation $$(grep -E '^deepspeed==' requirements-lock.txt)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	# Liger's fused kernels (Triton, GPU only): where torch is a CUDA build, never on the CPU path.
	if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then \
		$(BIN)/pip install --quiet $$(grep -vE '^(#|$$)' requirements-cuda.txt); fi
	touch $(STAMP)

demo: install
	$(BIN)/accelerate launch --config_file accelerate_configs/multi_gpu_ddp.yaml --num_processes $(NPROC) \
		07_distributed_training.py --output_dir runs/demo --overwrite_output_dir

test: install
	$(BIN)/python -m pytest -q

# Everything, the opt-in tiers included (families matrix, full strategy matrices): about an hour on 2 cores.
test-full: install
	$(BIN)/python -m pytest -q -m "full or families or not (full or families)"

# The full model-family x strategy matrix (about 30 two-process runs; CI runs a cut of it in `make test`).
test-families: install
	$(BIN)/python -m pytest -q -m families tests/distributed/test_families.py

# What `disttune check` knows of DeepSpeed's and accelerate's configs, read from the installed versions into
# src/disttune/config/data/derived_schema.json (run as a script: it must not need the file it writes). After
# upgrading either library, run this and review the diff; tests/unit/test_config_schema_drift.py fails until then.
schema: install
	$(BIN)/python src/disttune/config/derive.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
