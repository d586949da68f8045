#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv at the repository root with
# the Python dependencies (torch from PyPI; pip's cache makes re-runs cheap)
# and a release build of the Rust extension (maturin's PEP 517 build is
# --release). Needs python3 >= 3.11 and a Rust toolchain (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import thanos_rs, thanos_rs._core; print('thanos_rs', thanos_rs.__version__, 'ready in .venv')"
