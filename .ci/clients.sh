#!/usr/bin/env bash
# Installs the real Kafka clients that keel's interop tests (node/tests/interop.rs) drive:
#   - kcat 1.7.1 from Debian (librdkafka 2.0.2: the oldest, strictest client we test),
#   - promtool from Debian's prometheus package (node/tests/broker_groups.rs checks /metrics with it),
#   - a Python venv at .venv with confluent-kafka (bundles librdkafka 2.x), kafka-python 3.x and
#     aiokafka (asyncio), plus the codecs kafka-python needs: python-snappy (snappy), lz4 (lz4),
#     zstandard (zstd); gzip is in the standard library. crc32c makes kafka-python's batch CRC
#     fast. matplotlib draws docs/dashboard.png (node/tests/dashboard.rs),
#   - kafkajs (Node.js, from npm) in .clients/node/node_modules (node/tests/client_matrix.rs).
# Idempotent and quick when everything is already there. Runs as root with no stdin (CI);
# uses sudo only when not root. Exits non-zero with a message saying what could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the versions the interop tests were written against (docs/protocol.md, "Clients keel
# is tested with").
python_packages=(
    "confluent-kafka==2.16.1"
    "kafka-python==3.0.12"
    "python-snappy==0.7.3"
    "lz4==4.4.5"
    "zstandard==0.25.0"
    "crc32c==2.9.post0"
    "aiokafka==0.14.0"
    "matplotlib==3.11.2"
)
python_modules="confluent_kafka, kafka, aiokafka, snappy, lz4.frame, zstandard, crc32c, matplotlib"
npm_packages=("kafkajs@2.2.4")
npm_dir=.clients/node
venv=.venv
stamp="$venv/.keel-clients"

die() {
    echo "clients.sh: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

# --- kcat (Debian) -----------------------------------------------------------------------
if ! command -v kcat >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing (fresh image) or stale; update once, and again only if
    # the first install attempt fails.
    if ! apt-cache show kcat >/dev/null 2>&1; then
        as_root apt-get update -q </dev/null || die "apt-get update failed"
    fi
    if ! as_root apt-get install -y -q --no-install-recommends kcat </dev/null; then
        as_root apt-get update -q </dev/null || die "apt-get update failed"
        as_root apt-get install -y -q --no-install-recommends kcat </dev/null ||
            die "apt-get install kcat failed (Debian's kcat package is needed by the interop tests)"
    fi
    command -v kcat >/dev/null 2>&1 || die "kcat was installed but is not on PATH"
fi
echo "clients.sh: kcat $(kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\) .*librdkafka \([^ ]*\) .*/\1 (librdkafka \2)/p')"

# --- promtool (Debian's prometheus package): checks the metrics endpoint's output --------
if ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y -q --no-install-recommends prometheus </dev/null; then
        as_root apt-get update -q </dev/null || die "apt-get update failed"
        as_root apt-get install -y -q --no-install-recommends prometheus </dev/null ||
            die "apt-get install prometheus failed (its promtool checks keel's metrics)"
    fi
    command -v promtool >/dev/null 2>&1 || die "prometheus was installed but promtool is not on PATH"
fi
echo "clients.sh: $(promtool --version 2>&1 | head -n 1)"

# --- Python clients ----------------------------------------------------------------------
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || die "$python not found (CPython 3 is needed for the interop tests)"
want="$("$python" -c 'import sys; print(sys.version.split()[0])') ${python_packages[*]}"

check_venv() {
    [ -x "$venv/bin/python" ] &&
        [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$venv/bin/python" -c "import $python_modules" >/dev/null 2>&1
}

if ! check_venv; then
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$venv"
        "$python" -m venv "$venv" </dev/null ||
            die "could not create the venv at $venv with $python -m venv (on Debian: apt-get install python3-venv)"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "${python_packages[@]}" </dev/null ||
        die "pip could not install: ${python_packages[*]}"
    "$venv/bin/python" -c "import $python_modules" ||
        die "the Python clients were installed but do not import"
    printf '%s\n' "$want" >"$stamp"
fi
"$venv/bin/python" - <<'EOF'
import confluent_kafka, kafka, aiokafka
print("clients.sh: confluent-kafka %s (librdkafka %s), kafka-python %s, aiokafka %s" % (
    confluent_kafka.version(), confluent_kafka.libversion()[0], kafka.__version__,
    aiokafka.__version__))
EOF

# --- kafkajs (npm, into a local folder) ---------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    as_root apt-get update -q </dev/null || die "apt-get update failed"
    as_root apt-get install -y -q --no-install-recommends nodejs npm </dev/null ||
        die "node and npm are needed for kafkajs: apt-get install nodejs npm failed"
fi
npm_want="$(node --version) ${npm_packages[*]}"
if [ ! -f "$npm_dir/.keel-clients" ] || [ "$(cat "$npm_dir/.keel-clients")" != "$npm_want" ] ||
    ! node -e "require('./$npm_dir/node_modules/kafkajs')" >/dev/null 2>&1; then
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-save --no-audit --no-fund --no-package-lock --silent \
        "${npm_packages[@]}" </dev/null || die "npm could not install: ${npm_packages[*]}"
    node -e "require('./$npm_dir/node_modules/kafkajs')" ||
        die "kafkajs was installed but does not load"
    printf '%s\n' "$npm_want" >"$npm_dir/.keel-clients"
fi
echo "clients.sh: kafkajs $(node -p "require('./$npm_dir/node_modules/kafkajs/package.json').version") (node $(node --version))"
