#!/usr/bin/env bash
#SBATCH --job-name=semantoks
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#
# One bids_semantoks level inside the Apptainer image, as a SLURM job. Submitted by
# slurm_submit.sh (read it first); usable by hand:
#
#   sbatch --array=1-20 --export=ALL,SIF=$PWD/semantoks.sif,BIDS_DIR=/data/fmriprep,OUT_DIR=/data/semantoks,LABELS_FILE=labels.txt \
#       singularity/slurm_job.sh participant [app options]
#   sbatch --dependency=afterok:<array job id> --export=ALL,SIF=...,BIDS_DIR=...,OUT_DIR=... singularity/slurm_job.sh group [app options]
#   sbatch --gres=gpu:1 --export=ALL,SIF=...,BIDS_DIR=...,OUT_DIR=... singularity/slurm_job.sh pretrain [app options]
#
# Levels:
#   participant  array task i runs the i-th label of $LABELS_FILE (one label per line)
#   group        one job over every participant's outputs
#   pretrain     one job on a GPU: apptainer --nv, --device cuda (needs an image built with a
#                CUDA torch, e.g. --build-arg TORCH_VARIANT=cu128)
#
# Environment:
#   SIF          the image (required)
#   BIDS_DIR     input dataset, bound read-only at /bids (required)
#   OUT_DIR      output dataset, bound at /out (required)
#   LABELS_FILE  participant labels, one per line (participant level)
#   DATA_DIR     optional host data cache (filled with `python -m bids_semantoks.prefetch`), bound
#                read-only over the image's cache; default: the cache baked into the image
#   WORK_ROOT    node-local scratch for the work directory; default $SLURM_TMPDIR, $TMPDIR or /tmp
#   APPTAINER    apptainer or singularity (default: whichever is installed)
#
# The container runs with --cleanenv (nothing from the host environment leaks in) and without
# network access needs: atlases and weights come from the image or DATA_DIR.
set -euo pipefail

level=${1:-}
case "$level" in
  participant|group|pretrain) shift ;;
  *) echo "usage: slurm_job.sh participant|group|pretrain [bids_semantoks options]" >&2; exit 64 ;;
esac
: "${SIF:?set SIF to the Apptainer image}"
: "${BIDS_DIR:?set BIDS_DIR to the input dataset}"
: "${OUT_DIR:?set OUT_DIR to the output dataset}"

if [ -z "${APPTAINER:-}" ]; then
  if command -v apptainer >/dev/null 2>&1; then APPTAINER=apptainer; else APPTAINER=singularity; fi
fi
cpus=${SLURM_CPUS_PER_TASK:-1}
work_root=${WORK_ROOT:-${SLURM_TMPDIR:-${TMPDIR:-/tmp}}}
mkdir -p "$OUT_DIR"
work=$(mktemp -d "${work_root%/}/semantoks_${SLURM_JOB_ID:-local}_${SLURM_ARRAY_TASK_ID:-0}_XXXXXX")
trap 'rm -rf "$work"' EXIT

flags=(--cleanenv)
binds=(--bind "$BIDS_DIR:/bids:ro" --bind "$OUT_DIR:/out" --bind "$work:/work")
if [ -n "${DATA_DIR:-}" ]; then
  binds+=(--bind "$DATA_DIR:/opt/bids_semantoks/data:ro")
fi
args=(/bids /out "$level" --work-dir /work --notrack)

case "$level" in
  participant)
    : "${LABELS_FILE:?set LABELS_FILE (one participant label per line)}"
    : "${SLURM_ARRAY_TASK_ID:?submit the participant level as an array job (sbatch --array=1-N)}"
    label=$(grep -v -e '^[[:space:]]*$' -e '^#' "$LABELS_FILE" | sed -n "${SLURM_ARRAY_TASK_ID}p" | tr -d '[:space:]')
    if [ -z "$label" ]; then
      echo "slurm_job.sh: no label number $SLURM_ARRAY_TASK_ID in $LABELS_FILE" >&2
      exit 64
    fi
    args+=(--participant-label "$label" --nprocs "$cpus" --omp-nthreads 1)
    ;;
  group)
    args+=(--nprocs "$cpus" --omp-nthreads 1)
    ;;
  pretrain)
    flags+=(--nv)
    args+=(--device cuda --nprocs 1 --omp-nthreads "$cpus")
    ;;
esac

echo "semantoks: $level ${label:+sub-$label }on $(hostname), work dir $work" >&2
status=0
"$APPTAINER" run "${flags[@]}" "${binds[@]}" "$SIF" "${args[@]}" "$@" || status=$?
exit "$status"
