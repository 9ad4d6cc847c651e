#!/usr/bin/env bash
# Set up everything a fresh machine needs, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# headless Chromium renders the group report in a test (Debian package)
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the report rendering test will fail" >&2
  fi
fi
# Tests read atlases and fixtures from ../shared in place (no network needed).
export BIDS_SEMANTOKS_ATLAS_DIR="${BIDS_SEMANTOKS_ATLAS_DIR:-$(cd .. && pwd)/shared/atlases}"
exec .venv/bin/python -m pytest -q "$@"
