#!/usr/bin/env bash
# The test suite: Rust format/lint and unit tests of the core, then pytest
# (property tests against the float64 reference, pipeline end to end).
# Run scripts/setup.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release
.venv/bin/python -m pytest -q "$@"
