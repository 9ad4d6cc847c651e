#!/usr/bin/env bash
# GPU check of issue 15, prepared for a session with a lent GPU: every stage in one go,
# each under its own timeout, each printing ONE summary line; logs and JSON under $OUT.
#
#   parity       CUDA fp32 with TF32 off vs ../shared/fixtures/reference_parity (<= 1e-5)
#   encoder      benchmarks/gpu_encoder.py at batch 1024: fp32, TF32, bf16, bf16 compiled
#                (ratios vs the authors' 16,550 fp16 / 5,995 fp32 crops/s on an H100)
#   throughput   benchmarks/pretrain_throughput.py eager vs compiled encoders vs compiled step
#                (encoders + loss assembly), base @ 512, profile split, EMA foreach vs plain
#                (ratio vs the authors' 1,780 subjects/s on an H100)
#   pretrain     `pretrain --device cuda` on N_PRE synthetic subjects, one epoch, compiled, timed
#   participant  `participant --device cuda --model <that folder>` on N_PART synthetic runs, timed
#
# Usage (repository root):
#   OUT=/tmp/gpu scripts/gpu_check.sh                      # all stages on the GPU
#   OUT=/tmp/gpu STAGES="pretrain participant" scripts/gpu_check.sh   # a subset (rerun)
#   OUT=/tmp/smoke scripts/gpu_check.sh --cpu-smoke         # tiny CPU run of the same steps
#
# Environment: OUT (results folder, default a new temporary one; only logs, JSON and the run's
# training logs go there), WORK (data sets and outputs, default a new temporary folder), PYTHON,
# STAGES, N_PRE (10000), N_PART (1000), VOLS (180), FIXTURE (parity fixture folder; default
# shared/fixtures/reference_parity in the repository, else ../shared/...), ANCHOR_SCALE (the
# H100 anchors are multiplied by it; default 1 on an H100, 1.07 on an H200 = our own compiled
# step H200/H100, docs/results_pretrain.md, else 1 with a warning in the tables), and
# T_ENCODER/T_THROUGHPUT/T_PRETRAIN/T_PARTICIPANT (stage timeouts, seconds).
# Budget on an H100/H200 (estimates, not measurements): encoder ~1-2 min, throughput ~4 min
# (compilation ~70 s), pretrain ~3-5 min (writing and reading 10,000 TSVs dominates), participant
# ~2 min: run the stages in two calls (STAGES) when a call is limited to 10 minutes.
# Exit status: 0 when every stage run passed, else the number of failed stages.
set -u
MODE=gpu
[[ "${1:-}" == "--cpu-smoke" || "${1:-}" == "--dry-run" ]] && MODE=cpu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 66
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# the synthetic data sets and the app's outputs (GBs at full size) stay out of $OUT
WORK=${WORK:-$(mktemp -d -t gpu_check_work.XXXXXX)}
mkdir -p "$WORK"
STAGES=${STAGES:-"parity encoder throughput pretrain participant"}
if [[ -z "${FIXTURE:-}" ]]; then
  FIXTURE=$ROOT/shared/fixtures/reference_parity
  [[ -d "$FIXTURE" ]] || FIXTURE=$ROOT/../shared/fixtures/reference_parity
fi

if [[ $MODE == gpu ]]; then
  DEVICE=cuda; N_PRE=${N_PRE:-10000}; N_PART=${N_PART:-1000}; VOLS=${VOLS:-180}
  ENC_ARGS=(--batch 1024 --repeats 10 --compile)
  THR_ARGS=(--device cuda --steps 12 --profile --variants "eager,compiled,step")
  PRE_ARGS=(--model-size base --batch-size 512)
  GEN_SIZE=()
  CARD=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>/dev/null)
  if [[ -z "${ANCHOR_SCALE:-}" ]]; then
    case "$CARD" in *H100*) ANCHOR_SCALE=1 ;; *H200*) ANCHOR_SCALE=1.07 ;; *) ANCHOR_SCALE=1 ;; esac
  fi
else
  DEVICE=cpu; N_PRE=${N_PRE:-24}; N_PART=${N_PART:-3}; VOLS=${VOLS:-120}
  ENC_ARGS=(--device cpu --size tiny --batch 4 --repeats 1)
  THR_ARGS=(--device cpu --size tiny --batch 8 --steps 2 --profile)
  PRE_ARGS=(--model-size tiny --batch-size 8)
  GEN_SIZE=(--small)
  CARD=CPU; ANCHOR_SCALE=${ANCHOR_SCALE:-1}
fi
T_ENCODER=${T_ENCODER:-240}; T_THROUGHPUT=${T_THROUGHPUT:-420}
T_PRETRAIN=${T_PRETRAIN:-540}; T_PARTICIPANT=${T_PARTICIPANT:-300}
echo "gpu_check: mode $MODE, device $DEVICE ($CARD), anchor scale $ANCHOR_SCALE, stages: $STAGES, results in $OUT"
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}")' \
  > "$OUT/versions.txt" 2>&1

FAILED=0
want() { [[ " $STAGES " == *" $1 "* ]]; }
# run NAME TIMEOUT CMD...: log to $OUT/NAME.log, record rc and seconds in $OUT/NAME.status
run() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "rc=$rc seconds=$((SECONDS - t0))" > "$OUT/$name.status"
  [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
  return $rc
}
status() { cat "$OUT/$1.status"; }
timed_out() { [[ $1 == 124 || $1 == 137 ]] && echo " (TIMED OUT)"; }

# --- parity + inference throughput (one process: the parity fixture is read once) ---------
if want parity || want encoder; then
  ENC_EXTRA=()
  want encoder || ENC_EXTRA=(--batch 8 --repeats 1)
  run encoder "$T_ENCODER" "$PY" benchmarks/gpu_encoder.py --fixture "$FIXTURE" "${ENC_ARGS[@]}" "${ENC_EXTRA[@]}" \
      --anchor-scale "$ANCHOR_SCALE" --json "$OUT/encoder.json"
  rc=$?
  want parity && "$PY" - "$OUT/encoder.json" "$(status encoder)$(timed_out $rc)" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(f"parity: no result [{sys.argv[2]}], see encoder.log"); raise SystemExit
w = r.get("parity_worst")
print(f"parity: worst max abs {w:.3g} ({'PASS' if w is not None and w <= 1e-5 else 'FAIL'} <= 1e-5), "
      f"embed_series device vs cpu {r.get('embed_series_vs_cpu', float('nan')):.3g} [{sys.argv[2]}]"
      if w is not None else f"parity: skipped (no fixture) [{sys.argv[2]}]")
EOF
  want encoder && "$PY" - "$OUT/encoder.json" "$(status encoder)$(timed_out $rc)" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(f"encoder: no result [{sys.argv[2]}], see encoder.log"); raise SystemExit
a, s = r["anchor"], r["anchor_scale"]
gpu = r.get("device", "").startswith("cuda") and r["rows"] and r["rows"][0]["size"] == "base"
cells = [f"{x['mode']} {x['crops_per_s']:.0f}/s "
         + (f"({x['crops_per_s'] / (a[x['anchor_key']] * s):.2f}x)" if gpu else "(no ratio)") for x in r["rows"]]
print(f"encoder: batch {r['rows'][0]['batch'] if r['rows'] else '?'}: " + "; ".join(cells) + f" [{sys.argv[2]}]")
EOF
fi

# --- pre-training step throughput, eager vs compiled ---------------------------------------
if want throughput; then
  run throughput "$T_THROUGHPUT" "$PY" benchmarks/pretrain_throughput.py "${THR_ARGS[@]}" \
      --anchor-scale "$ANCHOR_SCALE" --json "$OUT/throughput.json"
  rc=$?
  "$PY" - "$OUT/throughput.json" "$(status throughput)$(timed_out $rc)" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(f"throughput: no result [{sys.argv[2]}], see throughput.log"); raise SystemExit
anchor = r["anchor"]["subjects_per_s"] * r["anchor_scale"]
cells = []
for x in r["rows"]:
    ratio = f"{x['subjects_per_s'] / anchor:.2f}x" if x["batch"] == 512 and "CPU" not in x["device"] else "no ratio"
    sp = x.get("split") or {}
    split = "/".join(f"{sp.get(k, float('nan')):.0f}" for k in ("matmul", "elementwise", "other"))
    name = {"False": "eager", "True": "compiled", "step": "step"}.get(str(x["compile"]), str(x["compile"]))
    cells.append(f"{name} {x['subjects_per_s']:.0f} subj/s "
                 f"({ratio}), {x['memory']}, mm/elem/other {split} ms")
print("throughput: " + "; ".join(cells) + f" [{sys.argv[2]}]")
EOF
fi

# --- pretrain on N_PRE synthetic subjects, then participant with that model ----------------
PRE_BIDS=$WORK/pre_bids; PRE_OUT=$WORK/pretrain_out; MODEL=$PRE_OUT/models/gpucheck
if want pretrain; then
  rm -rf "$PRE_BIDS" "$PRE_OUT"
  "$PY" benchmarks/synthetic_timeseries.py "$PRE_BIDS" --subjects 2 --volumes "$VOLS" "${GEN_SIZE[@]}" > /dev/null
  t0=$SECONDS
  "$PY" benchmarks/synthetic_timeseries.py "$PRE_OUT" --subjects "$N_PRE" --volumes "$VOLS" "${GEN_SIZE[@]}" \
      --as-outputs > "$OUT/pretrain_gen.log" 2>&1
  GEN_S=$((SECONDS - t0))
  run pretrain "$T_PRETRAIN" "$PY" -m bids_semantoks "$PRE_BIDS" "$PRE_OUT" pretrain --device "$DEVICE" \
      --input-type timeseries --atlas "$PRE_BIDS/atlas-Synth457/atlas-Synth457_dseg.tsv" --epochs 1 \
      --model-name gpucheck "${PRE_ARGS[@]}" -v
  rc=$?
  mkdir -p "$OUT/pretrain_training" && cp "$MODEL"/training/*.tsv "$MODEL"/training/options.yaml \
      "$MODEL/config.json" "$OUT/pretrain_training/" 2>/dev/null
  "$PY" - "$MODEL/training/epoch_log.tsv" "$N_PRE" "$GEN_S" "$(status pretrain)$(timed_out $rc)" <<'EOF'
import sys
import pandas as pd
path, n, gen, st = sys.argv[1:]
try:
    e = pd.read_csv(path, sep="\t", na_values="n/a").iloc[-1]
except Exception:
    print(f"pretrain: {n} subjects: no epoch log [{st}], see pretrain.log"); raise SystemExit
print(f"pretrain: {n} subjects (read from prepared participant outputs), 1 epoch of {int(e['steps'])} steps: "
      f"epoch {e['seconds']:.1f} s "
      f"({e['subjects_per_s']:.0f} subj/s incl. compilation), loss {e['loss']:.4f}, erank {e['proj_erank']:.1f}; "
      f"writing the series {gen} s [{st} = whole command]")
EOF
fi

if want participant; then
  PART_BIDS=$WORK/part_bids; PART_OUT=$WORK/participant_out
  rm -rf "$PART_BIDS" "$PART_OUT"
  "$PY" benchmarks/synthetic_timeseries.py "$PART_BIDS" --subjects "$N_PART" --volumes "$VOLS" --seed 1 \
      "${GEN_SIZE[@]}" > /dev/null 2>&1
  if [[ -f "$MODEL/model.safetensors" ]]; then
    run participant "$T_PARTICIPANT" "$PY" -m bids_semantoks "$PART_BIDS" "$PART_OUT" participant --device "$DEVICE" \
        --input-type timeseries --atlas "$PART_BIDS/atlas-Synth457/atlas-Synth457_dseg.tsv" --model "$MODEL" \
        -w "$WORK/part_work" -v
    rc=$?
    n_emb=$(find "$PART_OUT" -name "*_embedding.tsv" 2>/dev/null | wc -l)
    echo "participant: $N_PART runs -> $n_emb embedding tables [$(status participant)$(timed_out $rc) = whole command]"
  else
    FAILED=$((FAILED + 1))
    echo "participant: skipped, no model at $MODEL (run the pretrain stage first)"
  fi
fi

echo "gpu_check: $FAILED failed stage(s); logs and JSON in $OUT"
exit "$FAILED"
