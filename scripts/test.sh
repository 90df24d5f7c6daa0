#!/usr/bin/env bash
# The whole test suite, as CI runs it: one optimised build shared by the tests and the CLI, then
# the service end to end: its page in headless Chromium (Debian's package, installed when missing)
# and the official `openai` Python client (in a venv made here). Arguments go to `cargo test`
# and skip the end-to-end part; STIPPLE_SKIP_E2E=1 skips it too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace "$@"
if [ $# -gt 0 ] || [ "${STIPPLE_SKIP_E2E:-0}" = 1 ]; then
  exit 0
fi

target="${CARGO_TARGET_DIR:-target}"
# The same targets and features as the test build, so this only makes sure the binary is there.
cargo build --release --workspace --all-targets
# A private copy: other builds sharing the target folder may replace the binary meanwhile.
mkdir -p target/e2e
cp "$target/release/stipple" target/e2e/stipple
export STIPPLE_BIN="$PWD/target/e2e/stipple"
export ARTIFACTS="$PWD/target/test-artifacts/browser"

if ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd crates/stipple-server/tests/browser && npm ci --no-audit --no-fund --silent)
node crates/stipple-server/tests/browser/e2e.mjs

if [ ! -x target/e2e/venv/bin/python ]; then
  python3 -m venv target/e2e/venv
fi
target/e2e/venv/bin/pip install -q --disable-pip-version-check -r crates/stipple-server/tests/openai/requirements.txt
target/e2e/venv/bin/python crates/stipple-server/tests/openai/test_openai_client.py
echo "screenshots: $ARTIFACTS"
