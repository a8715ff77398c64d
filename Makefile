# The tested torch pair is installed first, then the project (editable) with DICOM support, the Ray executor and its
# dev tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
# absolute: the demo's commands run inside DEMO_DIR, wherever it is
CLI := $(abspath $(BIN))/btxrd-cam
# compare in the demo: the 7 single-pass CAMs (its default) and one pixel attribution beside them
DEMO_METHODS := gradcam,hirescam,gradcam++,xgradcam,layercam,eigencam,eigengradcam,integrated-gradients

.PHONY: install demo test lint bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev,dicom,ray]'
	touch $(STAMP)

# The main job: build the synthetic BTXRD-layout demo, then explain it (annotate-iou before gallery: gallery then
# reads the tumour images from the cache; sanity on 32 images, ROAD on 8, to keep it all under 6 minutes).
demo: install
	$(BIN)/btxrd-cam demo $(DEMO_DIR)
	cd $(DEMO_DIR) && $(CLI) audit > /dev/null
	cd $(DEMO_DIR) && $(CLI) annotate-iou > /dev/null
	cd $(DEMO_DIR) && $(CLI) gallery > /dev/null
	cd $(DEMO_DIR) && $(CLI) infer -q --metrics results/gradcam/metrics.json > /dev/null
	cd $(DEMO_DIR) && $(CLI) compare --methods $(DEMO_METHODS) > /dev/null
	cd $(DEMO_DIR) && $(CLI) evidence > /dev/null
	cd $(DEMO_DIR) && $(CLI) sanity --images 32 --road-images 8 > /dev/null
	cd $(DEMO_DIR) && $(CLI) report > /dev/null
	@echo "" >&2
	@echo "Results (audit, galleries, annotation agreement, comparison, evidence, sanity): $(DEMO_DIR)/results/gradcam/" >&2
	@echo "HTML report (open it in a browser):                                         $(DEMO_DIR)/results/gradcam/report.html" >&2

test: install
	$(BIN)/python -m pytest

# The long fuzzing profile: thousands of generated and mutated LabelMe files and images per property.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz.py --hypothesis-show-statistics

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
