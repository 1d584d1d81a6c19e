#!/usr/bin/env bash
# Builds the TaskFlow host image on a machine with no container registry to
# pull from: the `runtime` stage of host/Dockerfile (the very stage users
# build for AWS), over a Debian bookworm root file system made here with
# mmdebstrap from Debian's packages, with a taskflow binary built on this
# machine and the RDS CA bundle extracted here by host/image/rds-ca.sh.
#
#   host/image/build-local.sh [--tag REF] BINARY
#
# BINARY: a taskflow built for x86-64 Linux against glibc no newer than
# bookworm's (2.36), e.g. target/release/taskflow, or the debug binary the
# tests build. REF: the image's name [default: localhost/taskflow:local].
# Prints REF on stdout once the image is built; progress goes to stderr.
#
# Needs mmdebstrap, podman (4.3 works), node and npm (apt-get install
# mmdebstrap podman runc nodejs npm). The base root file system is kept in
# $TASKFLOW_IMAGE_CACHE [default: ~/.cache/taskflow/image] and imported as
# localhost/taskflow-base:bookworm-<hash of how it was made>; delete the
# cache (and that image) to pick up newer Debian packages. Made cold, it
# takes 25 to 80 s (mostly downloads; 85 MB); afterwards a build takes
# seconds (about 10 s with a 270 MB debug binary).
#
# Settings, from the environment:
#   TASKFLOW_DEBIAN_MIRROR  Debian mirror [default: http://deb.debian.org/debian]
#   TASKFLOW_OCI_RUNTIME    OCI runtime for the build's RUN step [default: runc,
#                           when installed: crun refuses hybrid cgroup hosts]
#   CONTAINERS_CONF         as podman reads it (tests/run.sh writes one)
set -euo pipefail

usage() {
    echo "usage: $0 [--tag REF] BINARY" >&2
    exit 2
}

tag=localhost/taskflow:local
binary=
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) [ $# -ge 2 ] || usage; tag="$2"; shift 2 ;;
        --tag=*) tag="${1#--tag=}"; shift ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$binary" ] || usage; binary="$1"; shift ;;
    esac
done
[ -n "$binary" ] || usage
[ -f "$binary" ] && [ -x "$binary" ] || { echo "$binary is not an executable file" >&2; exit 1; }
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dockerfile="$here/../Dockerfile"
for tool in mmdebstrap podman node npm; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "$tool is missing (Debian: apt-get install mmdebstrap podman runc nodejs npm)" >&2
        exit 1
    }
done
runtime="${TASKFLOW_OCI_RUNTIME:-}"
if [ -z "$runtime" ] && command -v runc >/dev/null 2>&1; then
    runtime=runc
fi
runtime_args=()
[ -z "$runtime" ] || runtime_args=(--runtime "$runtime")

cache="${TASKFLOW_IMAGE_CACHE:-$HOME/.cache/taskflow/image}"
mkdir -p "$cache"
# One build at a time per cache (two test binaries may ask at once).
exec 9>"$cache/.lock"
flock 9

step() { echo "build-local: $*" >&2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The base: what debian:bookworm-slim is (Debian's minbase, documentation
# and translations left out, no recommended packages, /usr merged by
# mmdebstrap's hook rather than by the usrmerge package, which would bring
# perl), with ca-certificates, from bookworm and its updates and security
# suites. glibc and libgcc-s, all a Rust binary links
# to dynamically, are part of minbase.
mirror="${TASKFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${mirror%/debian}/debian-security"
base_args=(
    --variant=minbase
    --include=ca-certificates
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --aptopt='Acquire::Languages "none"'
    --aptopt='APT::Install-Recommends "false"'
    bookworm
    "$work/rootfs.tar"
    "deb $mirror bookworm main"
    "deb $mirror bookworm-updates main"
    "deb $security bookworm-security main"
)
key="$(printf '%s\n' "${base_args[@]/$work/}" | sha256sum | cut -c1-12)"
base_tar="$cache/base-bookworm-$key.tar"
base_image="localhost/taskflow-base:bookworm-$key"
if [ ! -s "$base_tar" ]; then
    step "making the Debian bookworm base with mmdebstrap (once; under 2 minutes)"
    started=$SECONDS
    if ! mmdebstrap --quiet "${base_args[@]}" </dev/null >"$work/mmdebstrap.log" 2>&1; then
        cat "$work/mmdebstrap.log" >&2
        echo "mmdebstrap failed: is $mirror reachable?" >&2
        exit 1
    fi
    mv "$work/rootfs.tar" "$base_tar"
    step "base made in $((SECONDS - started)) s: $base_tar"
fi
if ! podman image exists "$base_image"; then
    step "importing $base_tar as $base_image"
    podman import --quiet "$base_tar" "$base_image" >/dev/null
fi

# The RDS CA bundle, as host/Dockerfile's node stage makes it.
rds_key="$(sha256sum "$here/rds-ca.sh" | cut -c1-12)"
rds_ca="$cache/rds-ca-$rds_key.pem"
if [ ! -s "$rds_ca" ]; then
    step "extracting the RDS CA bundle (host/image/rds-ca.sh)"
    "$here/rds-ca.sh" "$work/rds-ca.pem"
    mv "$work/rds-ca.pem" "$rds_ca"
fi

mkdir "$work/artifacts" "$work/context"
cp "$binary" "$work/artifacts/taskflow"
cp "$rds_ca" "$work/artifacts/rds-ca.pem"

# host/Dockerfile's runtime stage: RUNTIME_BASE is the base above, and the
# build context named `artifacts` (the binary and the bundle) replaces the
# stage of that name, so the node and Rust stages are skipped (nothing is
# pulled). The main context is empty: the runtime stage copies nothing from
# it. --format docker keeps the HEALTHCHECK, which OCI image configs cannot
# hold; --layers=false leaves no intermediate images behind (each holding a
# copy of the binary).
step "building $tag from host/Dockerfile (runtime stage)"
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
podman build --quiet --layers=false "${runtime_args[@]}" --network host --format docker \
    --file "$dockerfile" --target runtime \
    --build-arg RUNTIME_BASE="$base_image" \
    --build-context artifacts="$work/artifacts" \
    --tag "$tag" "$work/context" >/dev/null
# The image this tag named before (an older binary) goes, unless a
# container still uses it: rebuilds do not pile up binaries.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$tag"
