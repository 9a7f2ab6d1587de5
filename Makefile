# The README's two commands. Both build ./.venv from nothing; torch 2.14.1 and torchvision 0.29.1 are pinned
# here because they are the releases this project is tested with (change them for your CUDA if needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: quickstart test install install-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e '.[test]'
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0   # MTCNN weights only; --no-deps keeps its old torch pin out
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium chromium-driver >/dev/null; } \
		|| echo "chromium not installed: the bench ui browser test will be skipped"

# First command: train the embedded default grid (scikit-learn digits, no download, no server) and print its table.
quickstart: install
	$(BIN)/bench run --grid sweeps/quickstart.yaml

# Second command: the test suite, then the check that README tables match reports/results.
test: install-test
	$(BIN)/python -m pytest -q
	$(BIN)/bench report --readme README.md --check
