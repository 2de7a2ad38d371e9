# Set-up and entry points. `make test` and `make sample` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in requirements.txt) so pip never resolves a multi-GB CUDA build
# on machines where the CPU wheel 2.13.0 is available locally. Override with TORCH_SPEC=...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint sample clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Tests that need OpenAI's released artist/genre tables read JUKEBOX_IDS_DIR and skip without it (README: Testing).
test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check jukebox tests scripts benchmarks

# A few seconds of music from the bundled demo model (jukebox/models/demo), all three levels, on CPU.
SAMPLE_DIR ?= samples/demo
SAMPLE_SECONDS ?= 4
SEED ?= 0
sample: $(STAMP)
	$(PY) jukebox/sample.py --model=demo --name=$(SAMPLE_DIR) --levels=3 --sr=22050 \
		--sample_length_in_seconds=$(SAMPLE_SECONDS) --total_sample_length_in_seconds=$(SAMPLE_SECONDS) \
		--n_samples=2 --hop_fraction=0.5,0.5,0.5 --fp16=False --seed=$(SEED)
	@echo "Wav files: $(SAMPLE_DIR)/level_0/item_*.wav (final audio; level_1 and level_2 hold the coarser levels)"
	@echo "Web page:  $(SAMPLE_DIR)/level_0/index.html"
	@echo "Serve it:  cd $(SAMPLE_DIR) && $(CURDIR)/$(PY) -m http.server --bind 127.0.0.1 8000, then open http://127.0.0.1:8000/level_0/index.html"

clean:
	rm -rf $(VENV)
