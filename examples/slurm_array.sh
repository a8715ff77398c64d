#!/usr/bin/env bash
# compare over a split as a SLURM job array: one shard per array task, then one merge.
#
#   sbatch --array=0-7 examples/slurm_array.sh /shared/btxrd-project            # the shards
#   sbatch --dependency=afterok:<JOBID> --wrap \
#     "cd /shared/btxrd-project && .venv/bin/btxrd-cam merge results/gradcam"   # then the merge
#
# Every task reads the images, the annotations and the checkpoint from the project folder and writes its part under
# results/gradcam/shards/compare/: the folder must be on a file system every node sees. The merge writes exactly the
# files one unsharded run writes. A task that fails can be re-run alone (`sbatch --array=3 …`) and merged after.
# The shard's options must be the same in every task (merge checks: settings, checkpoint, N, batch size).
#SBATCH --job-name=btxrd-cam-compare
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=btxrd-cam-%A_%a.log
set -euo pipefail
PROJECT="${1:?the project folder (data_raw/, data/splits/, checkpoints/), on a shared file system}"
cd "$PROJECT"
BTXRD_CAM="${BTXRD_CAM:-.venv/bin/btxrd-cam}"
# one CPU thread per allotted core, the same in every task: a convolution's last bits depend on how many threads
# share its sums, so the merged report equals a single run's byte for byte when that run used as many threads
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"

"$BTXRD_CAM" compare -q \
  --methods gradcam,layercam,eigencam --layers auto \
  --shard "${SLURM_ARRAY_TASK_ID:?run me with sbatch --array}/${SLURM_ARRAY_TASK_COUNT:?run me with sbatch --array}" \
  --out results/gradcam
