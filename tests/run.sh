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
# cfn-lint checks the CloudFormation template (its tests also read the
# template through cfn-lint's decoder).
if ! command -v cfn-lint >/dev/null 2>&1; then
    python3 -m pip install --quiet 'cfn-lint==1.51.0'
fi
# checkov scans the template for insecure settings. Its dependencies clash
# with those of cfn-lint, moto and schemathesis (it pins boto3 1.35,
# packaging < 24 and networkx < 2.7), so it lives in a venv of its own; that
# venv's bin goes last on PATH, so that its python3 and pip never stand in
# for this Python's.
checkov_venv="$HOME/.cache/taskflow/checkov-venv"
PATH="$PATH:$checkov_venv/bin"
export PATH
if ! command -v checkov >/dev/null 2>&1; then
    python3 -m venv "$checkov_venv"
    "$checkov_venv/bin/python" -m pip install --quiet 'checkov==3.3.30'
fi

# What this script starts is stopped when it ends, however it ends.
cleanups=()
cleanup() {
    for step in "${cleanups[@]}"; do eval "$step" || true; done
}
trap cleanup EXIT

# Waits (30 s at most) until URL answers; else fails with WHAT's log.
wait_for_url() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, time, urllib.request
url, what, log = sys.argv[1:4]
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(f"{what} did not start:\n" + open(log).read())
PY
}

echo "==> PostgreSQL for the storage tests"
# The server at TASKFLOW_TEST_DATABASE_URL (by default the local one), or,
# where none answers, a throwaway one started here from the installed
# PostgreSQL binaries. No PostgreSQL at all fails the run: its tests never skip.
export TASKFLOW_TEST_DATABASE_URL="${TASKFLOW_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
if ! pg_isready -q -d "$TASKFLOW_TEST_DATABASE_URL" 2>/dev/null; then
    pg_bin="$( (ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true) | sort -V | tail -n 1)"
    if [ -z "$pg_bin" ]; then
        echo "no PostgreSQL answers at $TASKFLOW_TEST_DATABASE_URL and none is installed to start:" >&2
        echo "install PostgreSQL (Debian: apt-get install postgresql) or point TASKFLOW_TEST_DATABASE_URL at a server" >&2
        exit 1
    fi
    pg_data="$(mktemp -d)"
    pg_port=55432
    as_owner=()
    if [ "$(id -u)" = 0 ]; then
        # PostgreSQL refuses to run as root.
        chown postgres "$pg_data"
        as_owner=(runuser -u postgres --)
    fi
    "${as_owner[@]}" "$pg_bin/initdb" -D "$pg_data/db" -U postgres -A trust >/dev/null
    "${as_owner[@]}" "$pg_bin/pg_ctl" -D "$pg_data/db" -o "-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1" \
        -l "$pg_data/log" -w start >/dev/null
    cleanups+=('"${as_owner[@]}" "$pg_bin/pg_ctl" -D "$pg_data/db" -m immediate stop >/dev/null; rm -rf "$pg_data"')
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres test
    export TASKFLOW_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/test"
    echo "    started one at $TASKFLOW_TEST_DATABASE_URL"
fi

echo "==> moto, the AWS emulator, for the SQS tests"
# moto's server from PyPI on a free port; the tests that need it fail
# loudly without it, they never skip.
if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet 'moto[server]==5.2.1'
fi
moto_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_log="$(mktemp)"
# Through tests/support/moto_server.py: moto's own server with one fix (a
# stack changed by a change set gets its outputs, as on AWS).
python3 tests/support/moto_server.py -H 127.0.0.1 -p "$moto_port" >"$moto_log" 2>&1 &
moto_pid=$!
cleanups+=("kill $moto_pid 2>/dev/null; rm -f '$moto_log'")
wait_for_url "http://127.0.0.1:$moto_port/moto-api/" "moto_server" "$moto_log"
export TASKFLOW_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
# Hosts the tests run in their own process find the emulator this way.
export AWS_ENDPOINT_URL="$TASKFLOW_TEST_AWS_ENDPOINT"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
echo "    moto at $TASKFLOW_TEST_AWS_ENDPOINT"

echo "==> podman, mmdebstrap and a local registry for the image test; Chromium for the dashboard's"
# tests/tests/image.rs builds the host image (host/image/build-local.sh: the
# runtime stage of host/Dockerfile over a Debian base made with mmdebstrap),
# runs it with podman and pushes it to a registry; tests/tests/browser.rs
# drives the dashboard in headless Chromium through chromedriver. Without
# these tools they fail, they never skip. Debian packages, installed only
# when missing.
tool_packages=()
for tool_package in mmdebstrap:mmdebstrap podman:podman runc:runc docker-registry:docker-registry \
    chromium:chromium chromedriver:chromium-driver; do
    command -v "${tool_package%%:*}" >/dev/null 2>&1 || tool_packages+=("${tool_package#*:}")
done
if [ "${#tool_packages[@]}" -gt 0 ]; then
    echo "    apt-get install ${tool_packages[*]}"
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool_packages[@]}" >/dev/null
fi
# What podman needs on this machine class: no default ulimits (the
# containers may not raise them), cgroupfs rather than systemd's cgroup
# manager. The tests also pass --runtime runc and --network host.
if [ -z "${CONTAINERS_CONF:-}" ]; then
    containers_conf="$(mktemp)"
    cat >"$containers_conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
EOF
    cleanups+=("rm -f '$containers_conf'")
    export CONTAINERS_CONF="$containers_conf"
fi
# Debian's docker-registry (the CNCF distribution registry) on a free
# loopback port, storing into a scratch directory.
registry_dir="$(mktemp -d)"
registry_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$registry_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
EOF
docker-registry serve "$registry_dir/config.yml" >"$registry_dir/log" 2>&1 &
registry_pid=$!
cleanups+=("kill $registry_pid 2>/dev/null; rm -rf '$registry_dir'")
wait_for_url "http://127.0.0.1:$registry_port/v2/" "docker-registry" "$registry_dir/log"
export TASKFLOW_TEST_REGISTRY="127.0.0.1:$registry_port"
echo "    registry at $TASKFLOW_TEST_REGISTRY"

echo "==> building plugins and fixtures (wasm32-wasip2)"
plugins/build.sh

echo "==> building the taskflow binary (the end-to-end tests run it) and the tests"
# One cargo invocation for both: the tests' dev-dependencies turn on features
# of shared crates (chrono, the AWS SDK's, sqlx, ...), and built apart the
# binary would compile those crates a second time with other features.
cargo build --bins --tests

echo "==> running the tests (host, sdk, end-to-end)"
# The workspace's default members: the native crates, not the plugins.
cargo test --no-fail-fast "$@"
