# loratui — developer commands.  `make demo` and `make test` are the README's two.
PYTHON ?= python3
# The torch to install when none is present. On a CUDA machine install your
# CUDA build of torch first (https://pytorch.org); it is kept as is.
TORCH_SPEC ?= torch==2.13.0
STAMP := .venv-stamp

.PHONY: install demo demo-headless test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m loratui.tui.cli demo

demo-headless: $(STAMP)
	$(PYTHON) -m loratui.tui.cli demo --headless

test: $(STAMP)
	$(PYTHON) -m pytest -n 2 -q

bench: $(STAMP)
	$(PYTHON) bench/step_overhead.py

clean:
	rm -f $(STAMP)
