#!/usr/bin/env bash
# The demo walk-through: build the synthetic project, then run every command on it.
# Usage: examples/demo_walkthrough.sh [DIR]   (run from the repository root after `make install`)
set -euo pipefail
BTXRD_CAM="$(pwd)/.venv/bin/btxrd-cam"
DIR="${1:-demo}"

"$BTXRD_CAM" demo "$DIR"                      # data_raw/, data/splits/, checkpoints/best_stratified.pt
cd "$DIR"
"$BTXRD_CAM" infer --metrics results/metrics.json > results/predictions.jsonl
"$BTXRD_CAM" gallery > /dev/null               # results/gradcam/gallery_<Class>.png + gallery.json
"$BTXRD_CAM" annotate-iou > /dev/null          # results/gradcam/annotation_report.json + comparison figure
first=$(head -n 2 data/splits/stratified_test.csv | tail -n 1 | cut -d, -f1)
stem="${first%.*}"
annotation=()
[ -f "data_raw/Annotations/$stem.json" ] && annotation=(--annotation "data_raw/Annotations/$stem.json")
"$BTXRD_CAM" explain-image "data_raw/images/$first" "${annotation[@]}" --out results/explain --save-heatmap
ls results results/gradcam results/explain >&2
