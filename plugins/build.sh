#!/usr/bin/env bash
# Builds every example plugin and test fixture as a WebAssembly component
# (wasm32-wasip2), installing the target first if it is missing.
#
#   plugins/dist/<name>.wasm          the example plugins (a host's plugin directory)
#   tests/fixtures/dist/<name>.wasm   the fixtures the tests and benchmarks use
#
# The Rust plugins build with cargo; `greeter` is Python, built with
# componentize-py (installed from PyPI if missing), and `render` JavaScript,
# built with componentize-js (installed from npm if missing), against the
# same WIT world.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
plugins=(echo wordcount hash flaky)
fixtures=(hostile contract-0-1 greeter-rs)

args=()
for p in "${plugins[@]}"; do args+=(-p "taskflow-plugin-$p"); done
for f in "${fixtures[@]}"; do args+=(-p "taskflow-fixture-$f"); done
cargo build --profile plugin --target wasm32-wasip2 "${args[@]}"

out="$target_dir/wasm32-wasip2/plugin"
mkdir -p plugins/dist tests/fixtures/dist
for p in "${plugins[@]}"; do
    cp "$out/taskflow_plugin_$p.wasm" "plugins/dist/$p.wasm"
done
for f in "${fixtures[@]}"; do
    cp "$out/taskflow_fixture_${f//-/_}.wasm" "tests/fixtures/dist/$f.wasm"
done
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
if ! command -v componentize-py >/dev/null 2>&1; then
    python3 -m pip install --quiet 'componentize-py==0.25.1'
fi
componentize-py -d wit -w processor componentize -p plugins/greeter-py app -o plugins/dist/greeter.wasm >/dev/null
componentize-py -d wit -w processor componentize -p tests/fixtures/wordcount-py app \
    -o tests/fixtures/dist/wordcount-py.wasm >/dev/null

# `render` is JavaScript, built with componentize-js (from npm, pinned by its
# package-lock.json) by a small Node script against the same WIT world. Its
# package.json names preview2-shim too: componentize-js 0.23 imports it but
# declares it only for its own development, so `npm ci` would leave it out.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js and npm are needed to build the JavaScript plugin (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
(cd plugins/render-js && { [ -d node_modules/@bytecodealliance/componentize-js ] || npm ci --no-audit --no-fund --loglevel=error; } && node build.mjs ../dist/render.wasm)
# The JavaScript fixtures of the language benchmark, with the same tools.
for f in wordcount-js greeter-js; do
    (cd plugins/render-js && node build.mjs "../../tests/fixtures/dist/$f.wasm" "../../tests/fixtures/$f/app.js")
done

echo "plugins: $(cd plugins/dist && ls *.wasm | tr '\n' ' ')"
