# Set-up and the two entry points. Each target creates .venv with the pinned requirements if needed, and
# installs TeX Live (for the report's PDF) with apt-get where it is missing and can be installed.
#   make pipeline                                  dvc repro (downloads CIFAR-10 from the official URL)
#   make pipeline DATA=path.tar.gz DATA_MD5=<md5>  the same on a local archive, as a DVC experiment
#   make test                                      the test suite
#   make test-fast                                 the same without the tests marked slow (dvc, stage processes)
#   make golden                                    the golden tests under every kernel and thread setting
#   make verify                                    this run's result files against the reference run's SHA-256
#   make seeds N=5 J=2                             the pipeline over seeds 0..N-1 through DVC's queue, J workers
#   make compare EXPS="kl mse" [IMAGES=validation] experiments compared on their predictions, paired intervals
#   make push [REMOTE=...]                         the DVC cache and run-cache to a remote (default: a local folder)
#   make pull [REMOTE=...]                         the same back, then dvc repro restores every stage run there
VENV := .venv
STAMP := $(VENV)/.installed
TEX_PACKAGES := texlive-latex-recommended texlive-publishers texlive-fonts-recommended texlive-luatex \
	poppler-utils fonts-freefont-otf fonts-noto-cjk
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

N := 5
J := 2
# The default DVC remote: a folder outside the project that needs no account. Any DVC remote URL works too
# (s3://bucket/path, gs://..., ssh://host/path, with its dvc extra installed).
REMOTE := $(HOME)/.cache/quantlab/dvc-remote
LOCAL_REMOTE = $(if $(findstring ://,$(REMOTE)),,yes)
REMOTE_URL = $(if $(LOCAL_REMOTE),$(abspath $(REMOTE)),$(REMOTE))

.PHONY: pipeline test test-fast golden verify tex seeds compare remote push pull

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

tex:
	@if command -v lualatex >/dev/null && command -v pdftotext >/dev/null && kpsewhich IEEEtran.cls luaotfload.sty >/dev/null \
		&& fc-list | grep -q FreeSerif && fc-list | grep -q "Noto Serif CJK"; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); \
	else \
		echo "warning: TeX Live is missing and cannot be installed here; install TeX Live with LuaLaTeX, IEEEtran, pdftotext and the fonts FreeSerif and Noto Serif CJK (Debian: $(TEX_PACKAGES)); only the pdf stage needs it" >&2; \
	fi

pipeline: $(STAMP) tex
	python -m bench.workspace outputs
ifdef DATA
	@test -n "$(DATA_MD5)" || { echo "error: DATA_MD5 is not set: pass the archive's md5 as DATA_MD5=<md5>" >&2; exit 2; }
	dvc exp run -S data.url=$(abspath $(DATA)) -S data.md5=$(DATA_MD5)
else
	dvc repro
endif

test: $(STAMP) tex
	python -m pytest

# The tests marked slow (pytest.ini) left out: about a minute on 2 cores instead of 10 or more
test-fast: $(STAMP) tex
	python -m pytest -m "not slow"

# The pin (quantlab/compute.py) must win over whatever the environment asks for: the golden bytes under each
# combination of ATen's kernels, oneDNN's ISA and the thread count.
golden: $(STAMP)
	@for aten in avx2 avx512; do for isa in AVX2 AVX512_CORE_VNNI; do for threads in 1 2; do \
		echo "golden: ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$isa OMP_NUM_THREADS=$$threads"; \
		ATEN_CPU_CAPABILITY=$$aten ONEDNN_MAX_CPU_ISA=$$isa OMP_NUM_THREADS=$$threads \
			python -m pytest -q -p no:cacheprovider tests/test_golden.py || exit 1; \
	done; done; done

verify: $(STAMP)
	python -m bench.reference verify

seeds: $(STAMP) tex
	python -m bench.seeds --seeds $(N) --jobs $(J)

compare: $(STAMP)
	python -m bench.compare $(EXPS) $(if $(IMAGES),--images $(IMAGES))

# The remote goes into .dvc/config.local (not committed): each clone names its own.
remote: $(STAMP)
	dvc remote add --local --force --default shared "$(REMOTE_URL)"

push: remote
ifeq ($(LOCAL_REMOTE),yes)
	mkdir -p "$(REMOTE_URL)"
endif
	dvc push --run-cache

pull: $(STAMP)
ifeq ($(LOCAL_REMOTE),yes)
	@test -d "$(REMOTE_URL)" || { echo "error: the DVC remote $(REMOTE_URL) does not exist: run make push there first, or pass REMOTE=<folder or URL>" >&2; exit 2; }
endif
	python -m bench.workspace outputs
	dvc remote add --local --force --default shared "$(REMOTE_URL)"
	dvc pull --run-cache --allow-missing  # the run-cache; the outputs too, where dvc.lock is committed
	python -m bench.workspace pulled --remote "$(REMOTE_URL)"
	dvc repro --pull  # each stage run there comes back from the run-cache, its outputs from the remote
