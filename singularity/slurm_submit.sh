#!/usr/bin/env bash
# Submit a whole bids_semantoks analysis to SLURM: a job array whose tasks each process a chunk
# of participants (one by default), then one group job that starts only when every participant
# task succeeded (and, with --pretrain, one GPU pre-training job after them as well).
#
#   singularity/slurm_submit.sh [--labels FILE] [--data-dir DIR] [--subjects-per-task N]
#       [--max-parallel N] [--no-group] [--pretrain] [--group-arg ARG]...
#       SIF BIDS_DIR OUT_DIR [-- bids_semantoks options for every level]
#
# Example:
#   singularity/slurm_submit.sh --max-parallel 50 --group-arg --target --group-arg age \
#       semantoks.sif /data/fmriprep /data/semantoks -- --denoise-strategy scrubbing
# A cohort (40,000 participants: 400 tasks of 100, at most 100 running at once):
#   singularity/slurm_submit.sh --subjects-per-task 100 --max-parallel 100 \
#       semantoks.sif /data/ukb_fmriprep /data/semantoks
#
# --subjects-per-task N: task i runs participants (i-1)*N+1 .. i*N of the list in one app
# call (--participant-label with N labels), so the array has ceil(count / N) tasks: keep it
# under the cluster's MaxArraySize (often 1001) and give each task time for N participants.
# Participant labels: --labels FILE (one per line, with or without "sub-"), else the
# participant_id column of BIDS_DIR/participants.tsv, else the sub-* folders of BIDS_DIR.
# Logs and the label list go to $LOG_DIR (default ./semantoks_logs). Resources: edit the #SBATCH
# lines of slurm_job.sh, or set SBATCH_* variables / pass sbatch options in SBATCH_OPTS
# (e.g. SBATCH_OPTS="--account=abc --partition=cpu"). Each job runs slurm_job.sh; see there.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }

here=$(cd "$(dirname "$0")" && pwd)
labels_file="" data_dir="" max_parallel="" per_task=1 group=1 pretrain=0
group_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --labels) labels_file=${2:?}; shift 2 ;;
    --data-dir) data_dir=${2:?}; shift 2 ;;
    --max-parallel) max_parallel=${2:?}; shift 2 ;;
    --subjects-per-task) per_task=${2:?}; shift 2 ;;
    --no-group) group=0; shift ;;
    --pretrain) pretrain=1; shift ;;
    --group-arg) group_args+=("${2:?}"); shift 2 ;;
    -h|--help) usage ;;
    --) break ;;
    -*) echo "slurm_submit.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
case "$per_task" in
  ''|*[!0-9]*|0*) echo "slurm_submit.sh: --subjects-per-task takes a positive integer, not '$per_task'" >&2; exit 64 ;;
esac
[ $# -ge 3 ] || usage
sif=$(realpath "$1") bids_dir=$(realpath "$2") out_dir=$(realpath -m "$3")
shift 3
if [ $# -gt 0 ]; then
  [ "$1" = "--" ] || usage
  shift
fi
[ -f "$sif" ] || { echo "slurm_submit.sh: no image $sif" >&2; exit 66; }
[ -d "$bids_dir" ] || { echo "slurm_submit.sh: no dataset $bids_dir" >&2; exit 66; }

log_dir=$(realpath -m "${LOG_DIR:-semantoks_logs}")
mkdir -p "$log_dir" "$out_dir"
list="$log_dir/participants_$(date +%Y%m%d_%H%M%S).txt"
if [ -n "$labels_file" ]; then
  grep -v -e '^[[:space:]]*$' -e '^#' "$labels_file" | sed 's/^sub-//' > "$list"
elif [ -f "$bids_dir/participants.tsv" ]; then
  awk -F '\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") c = i; next }
               c && $c != "" { sub(/^sub-/, "", $c); print $c }' "$bids_dir/participants.tsv" > "$list"
else
  find "$bids_dir" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sed 's/^sub-//' | sort > "$list"
fi
n=$(wc -l < "$list")
[ "$n" -gt 0 ] || { echo "slurm_submit.sh: no participant labels found (see $list)" >&2; exit 18; }

tasks=$(( (n + per_task - 1) / per_task ))
export SIF="$sif" BIDS_DIR="$bids_dir" OUT_DIR="$out_dir" LABELS_FILE="$list" SUBJECTS_PER_TASK="$per_task"
if [ -n "$data_dir" ]; then
  DATA_DIR=$(realpath "$data_dir")
  export DATA_DIR
fi
read -r -a extra_sbatch <<< "${SBATCH_OPTS:-}"
array="1-$tasks${max_parallel:+%$max_parallel}"

participants=$(sbatch --parsable "${extra_sbatch[@]}" --array="$array" --job-name=semantoks_participant \
  --output="$log_dir/%x_%A_%a.log" --export=ALL "$here/slurm_job.sh" participant "$@")
participants=${participants%%;*}
echo "participant level: job array $participants ($tasks tasks of up to $per_task of $n participants, labels in $list)"

if [ "$group" = 1 ]; then
  group_job=$(sbatch --parsable "${extra_sbatch[@]}" --dependency="afterok:$participants" --job-name=semantoks_group \
    --output="$log_dir/%x_%j.log" --export=ALL "$here/slurm_job.sh" group "$@" "${group_args[@]}")
  echo "group level: job ${group_job%%;*} (after $participants)"
fi
if [ "$pretrain" = 1 ]; then
  pretrain_job=$(sbatch --parsable "${extra_sbatch[@]}" --dependency="afterok:$participants" --gres=gpu:1 \
    --job-name=semantoks_pretrain --output="$log_dir/%x_%j.log" --export=ALL "$here/slurm_job.sh" pretrain "$@")
  echo "pretrain: job ${pretrain_job%%;*} on a GPU (after $participants)"
fi
