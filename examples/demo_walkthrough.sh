#!/usr/bin/env bash
# The demo walk-through: build the synthetic project, then run every command on it.
# Usage: examples/demo_walkthrough.sh [DIR]   (run from the repository root after `make install`)
set -euo pipefail
BTXRD_CAM="$(pwd)/.venv/bin/btxrd-cam"
DIR="${1:-demo}"

"$BTXRD_CAM" demo "$DIR"                      # data_raw/, data/splits/, checkpoints/best_stratified.pt
cd "$DIR"
mkdir -p results/gradcam
"$BTXRD_CAM" infer --metrics results/gradcam/metrics.json > results/predictions.jsonl
"$BTXRD_CAM" gallery > /dev/null               # results/gradcam/gallery_<Class>.png + gallery.json
"$BTXRD_CAM" annotate-iou > /dev/null          # annotation_report.json, figures, images/<id>.jpg overlays
"$BTXRD_CAM" compare > /dev/null               # comparison_report.json, comparison.png, comparison_grid.png
"$BTXRD_CAM" sanity > /dev/null                # sanity_report.json, sanity.png, sanity_maps.png
"$BTXRD_CAM" report                            # prints results/gradcam/report.html
first=$(head -n 2 data/splits/stratified_test.csv | tail -n 1 | cut -d, -f1)
stem="${first%.*}"
annotation=()
[ -f "data_raw/Annotations/$stem.json" ] && annotation=(--annotation "data_raw/Annotations/$stem.json")
"$BTXRD_CAM" explain-image "data_raw/images/$first" "${annotation[@]}" --out results/explain --save-heatmap
ls results results/gradcam results/explain >&2
