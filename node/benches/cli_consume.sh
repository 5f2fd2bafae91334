#!/usr/bin/env bash
# `keel consume` against kcat, reading the same 1,000,000 records to /dev/null in the same run
# (docs/benchmarks.md, "keel consume vs. kcat"). Not a timed test: a measurement to run by hand.
#
#   cargo build --release -p keel-node --bin keel
#   bash node/benches/cli_consume.sh            # RECORDS=1000000 VALUE_BYTES=100 ROUNDS=3
#
# Starts a one-broker `keel dev` on free ports with its data in a temporary directory under
# target/ (removed at the end, whatever happens), writes RECORDS records of VALUE_BYTES bytes to
# a 3-partition topic with `keel produce`, then alternates kcat and `keel consume` ROUNDS times,
# each reading the whole topic from the start to its end into /dev/null, and prints each run's
# seconds and records/s, the best of each, and keel/kcat.
set -euo pipefail
cd "$(dirname "$0")/../.."

RECORDS=${RECORDS:-1000000}
VALUE_BYTES=${VALUE_BYTES:-100}
ROUNDS=${ROUNDS:-3}
KEEL=${KEEL:-target/release/keel}
TOPIC=bench-consume

[ -x "$KEEL" ] || { echo "cli_consume.sh: $KEEL missing: cargo build --release -p keel-node --bin keel" >&2; exit 1; }
command -v kcat >/dev/null || { echo "cli_consume.sh: kcat missing: bash .ci/clients.sh" >&2; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for _ in $(seq 200); do
    p=$((21000 + RANDOM % 8000))
    if port_free "$p" && port_free $((p + 100)) && port_free $((p + 200)); then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "cli_consume.sh: no free ports" >&2; exit 1; }
BROKER=127.0.0.1:$PORT

mkdir -p target/tmp
DATA=$(mktemp -d target/tmp/cli-consume-bench.XXXXXX)
DEV_PID=
cleanup() {
    [ -n "$DEV_PID" ] && kill "$DEV_PID" 2>/dev/null && wait "$DEV_PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

"$KEEL" dev --brokers 1 --port "$PORT" --data-dir "$DATA/dev" >"$DATA/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 300); do
    grep -q "bootstrap servers" "$DATA/dev.log" && break
    sleep 0.1
done
grep -q "bootstrap servers" "$DATA/dev.log" || { cat "$DATA/dev.log" >&2; exit 1; }

export KEEL_BROKERS=$BROKER
"$KEEL" topic create "$TOPIC" -p 3 -r 1 >/dev/null
value=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' 'x')
awk -v n="$RECORDS" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "%09d%s\n", i, substr(v, 10) }' \
    >"$DATA/input.txt"
"$KEEL" produce "$TOPIC" --file "$DATA/input.txt" --acks 1 2>/dev/null
rm -f "$DATA/input.txt"

# Both must read every record; a short read would make a fast, wrong figure.
count_kcat=$(kcat -b "$BROKER" -C -t "$TOPIC" -o beginning -e -q | wc -l)
count_keel=$("$KEEL" consume "$TOPIC" | wc -l)
[ "$count_kcat" = "$RECORDS" ] && [ "$count_keel" = "$RECORDS" ] ||
    { echo "cli_consume.sh: read $count_kcat (kcat) and $count_keel (keel) of $RECORDS" >&2; exit 1; }

seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
best_kcat=
best_keel=
for round in $(seq "$ROUNDS"); do
    k=$(seconds kcat -b "$BROKER" -C -t "$TOPIC" -o beginning -e -q)
    o=$(seconds "$KEEL" consume "$TOPIC")
    printf 'round %d: kcat %.3f s (%.0f records/s), keel consume %.3f s (%.0f records/s)\n' \
        "$round" "$k" "$(echo "$RECORDS / $k" | bc -l)" "$o" "$(echo "$RECORDS / $o" | bc -l)"
    if [ -z "$best_kcat" ] || (( $(echo "$k < $best_kcat" | bc -l) )); then best_kcat=$k; fi
    if [ -z "$best_keel" ] || (( $(echo "$o < $best_keel" | bc -l) )); then best_keel=$o; fi
done
printf 'best: kcat %.0f records/s, keel consume %.0f records/s, keel/kcat %.2f\n' \
    "$(echo "$RECORDS / $best_kcat" | bc -l)" "$(echo "$RECORDS / $best_keel" | bc -l)" \
    "$(echo "$best_kcat / $best_keel" | bc -l)"
