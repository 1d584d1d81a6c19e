#!/usr/bin/env bash
# Runs TaskFlow's whole test suite on a fresh machine: installs the
# wasm32-wasip2 target, builds the plugins and fixtures, then runs every
# unit and end-to-end test of the workspace.
#
# The cargo target directory defaults to one outside the clone so that
# repeated runs (and CI on this machine) reuse the dependency build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taskflow/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> test tools from PyPI"
# Console scripts of pip-installed tools land in this Python's scripts folder,
# which need not be on PATH (e.g. under CI's trimmed environment).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v schemathesis >/dev/null 2>&1; then
    python3 -m pip install --quiet 'schemathesis==4.32.5'
fi

echo "==> building plugins and fixtures (wasm32-wasip2)"
plugins/build.sh

echo "==> building the taskflow binary (the end-to-end tests run it)"
cargo build --bins

echo "==> running the tests (host, sdk, end-to-end)"
# The workspace's default members: the native crates, not the plugins.
cargo test --no-fail-fast "$@"
