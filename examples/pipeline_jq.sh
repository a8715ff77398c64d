#!/usr/bin/env bash
# Shell pipelines over btxrd-cam's JSON: stdout is data, so jq reads it directly.
# Usage: examples/pipeline_jq.sh DEMO_DIR   (after `make demo`; needs jq)
set -euo pipefail
BTXRD_CAM="$(pwd)/.venv/bin/btxrd-cam"
cd "${1:-demo}"

# mean IoU and its bootstrap 95% interval
"$BTXRD_CAM" annotate-iou -q | jq '{mean_iou: .summary.iou.mean, ci95: .summary.iou_mean_ci95}'
# mean IoU per true class
jq '.breakdowns.by_class | map_values(.iou.mean)' results/gradcam/annotation_report.json
# the five confidently wrong predictions
"$BTXRD_CAM" infer -q | jq -s -c 'map(select(.pred != .label)) | sort_by(-.confidence) | .[:5][]
                                  | {image_id, label, pred, confidence}'
# which explanation agrees best with the outlines, and by how much more than the reference
"$BTXRD_CAM" compare -q | jq -c '.ranking[0] as $best | {best: $best, vs_reference: .paired[$best].pxap}'
# the sanity verdicts per method and measure
jq -c '.methods | map_values(.verdict)' results/gradcam/sanity_report.json
# which images landed in the Malignant gallery, by category
jq -c '.classes.Malignant.selected | map_values(map(.image_id))' results/gradcam/gallery.json
