#!/usr/bin/env bash
# The whole test suite, as CI runs it: one optimised build shared by the tests and the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace "$@"
