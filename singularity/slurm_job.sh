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
#   participant  array task i runs the i-th chunk of $SUBJECTS_PER_TASK labels of $LABELS_FILE
#                (one label per line; default 1 per task: task i runs the i-th label)
#   group        one job over every participant's outputs
#   pretrain     one job on a GPU: apptainer --nv, --device cuda (needs an image built with a
#                CUDA torch, e.g. --build-arg TORCH_VARIANT=cu128)
#
# Environment:
#   SIF          the image (required)
#   BIDS_DIR     input dataset, bound read-only at /bids (required)
#   OUT_DIR      output dataset, bound at /out (required)
#   LABELS_FILE  participant labels, one per line (participant level)
#   SUBJECTS_PER_TASK  participants per array task (default 1; slurm_submit.sh --subjects-per-task)
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
    per=${SUBJECTS_PER_TASK:-1}
    case "$per" in
      ''|*[!0-9]*|0*) echo "slurm_job.sh: SUBJECTS_PER_TASK must be a positive integer, not '$per'" >&2; exit 64 ;;
    esac
    first=$(( (SLURM_ARRAY_TASK_ID - 1) * per + 1 )) last=$(( SLURM_ARRAY_TASK_ID * per ))
    mapfile -t chunk < <(grep -v -e '^[[:space:]]*$' -e '^#' "$LABELS_FILE" | sed -n "${first},${last}p" \
      | tr -d '[:blank:]\r' | sed 's/^sub-//')
    if [ "${#chunk[@]}" -eq 0 ]; then
      if [ "$per" = 1 ]; then
        echo "slurm_job.sh: no label number $SLURM_ARRAY_TASK_ID in $LABELS_FILE" >&2
      else
        echo "slurm_job.sh: no labels $first-$last (task $SLURM_ARRAY_TASK_ID of $per each) in $LABELS_FILE" >&2
      fi
      exit 64
    fi
    label="${chunk[*]}"
    args+=(--participant-label "${chunk[@]}" --nprocs "$cpus" --omp-nthreads 1)
    ;;
  group)
    args+=(--nprocs "$cpus" --omp-nthreads 1)
    ;;
  pretrain)
    flags+=(--nv)
    args+=(--device cuda --nprocs 1 --omp-nthreads "$cpus")
    ;;
esac

echo "semantoks: $level ${label:+(participants $label) }on $(hostname), work dir $work" >&2
status=0
"$APPTAINER" run "${flags[@]}" "${binds[@]}" "$SIF" "${args[@]}" "$@" || status=$?
exit "$status"
