#!/usr/bin/env bash
# Set up everything, build the synthetic fMRIPrep demo dataset and run the app on it end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DEMO=${DEMO_DIR:-$PWD/demo_out}
# Atlas cache: ../shared/atlases when present (offline), else downloaded into the data cache.
if [ -z "${BIDS_SEMANTOKS_ATLAS_DIR:-}" ] && [ -d ../shared/atlases/derived ]; then
  BIDS_SEMANTOKS_ATLAS_DIR="$(cd ../shared/atlases && pwd)"
  export BIDS_SEMANTOKS_ATLAS_DIR
fi
exec .venv/bin/python -m bids_semantoks.demo_run "$DEMO"
