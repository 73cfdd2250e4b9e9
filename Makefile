# Set-up and the two entry points. Each target creates .venv with the pinned requirements if needed.
#   make pipeline                                  dvc repro (downloads CIFAR-10 from the official URL)
#   make pipeline DATA=path.tar.gz DATA_MD5=<md5>  the same on a local archive, as a DVC experiment
#   make test                                      the test suite
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: pipeline test

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

pipeline: $(STAMP)
ifdef DATA
	@test -n "$(DATA_MD5)" || { echo "error: DATA_MD5 is not set: pass the archive's md5 as DATA_MD5=<md5>" >&2; exit 2; }
	dvc exp run -S data.url=$(abspath $(DATA)) -S data.md5=$(DATA_MD5)
else
	dvc repro
endif

test: $(STAMP)
	python -m pytest
