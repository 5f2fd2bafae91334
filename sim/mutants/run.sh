#!/usr/bin/env bash
# keel's mutation testing: each patch in sim/mutants/ is a small, realistic slip in core/ or
# node/ (beyond core::planted's bugs). For each, on a copy of the working tree (the tree
# itself is never touched), this applies the patch, builds keel-sim (release, --cfg madsim),
# runs `keel-sim swarm` over seeds 1..N with every fault kind, and reports whether the
# simulator caught it (any seed not passing) and with which seed first. A mutant the
# simulator misses is run against the unit test its patch names (`Unit-test: <package>
# [<filter>]`), which must then fail. Before the mutants, the unmutated copy must pass every
# seed: a mutant's failing seed is then the mutant's doing.
#
# usage: sim/mutants/run.sh [--seeds N] [--jobs J] [NAME ...]   (NAME: a patch's file name
#        without .patch, e.g. 03-truncate-to-leader-epoch-end; default: every patch)
#
# A patch that no longer applies (the code it targets moved) is a failure, reported as
# STALE, never skipped: refresh it against the new code. Exit status: 0 when every mutant is
# caught (by the simulator or its unit test) and nothing is stale, 1 otherwise.
#
# The simulator builds go to target/mutants/sim (the first run builds the dependencies once);
# unit tests build in target/, next to the tree's own (the copy's crates apart).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seeds=200
jobs=2
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) names+=("$1"); shift ;;
    esac
done
work="$root/target/mutants"
src="$work/src"
mkdir -p "$src"
log="$work/log"
: >"$log"
export CARGO_TERM_COLOR=never
# The copy lives inside this repository's target/: without a ceiling, `git apply` run there
# would find the repository above it and silently skip every path outside the copy.
export GIT_CEILING_DIRECTORIES="$work"

# The working tree's files (tracked, and untracked ones git does not ignore), mtimes kept.
copy_tree() {
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$root" ls-files -co --exclude-standard -z \
        | tar -C "$root" --null -T - -cf - | tar -C "$src" -xf -
}

sim_build() {
    (cd "$src" && RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$work/sim" \
        cargo build --release -p keel-sim) >>"$log" 2>&1
}

# Prints "<seeds caught> <first seed caught> <its verdict and reason>" for the current copy.
sim_swarm() {
    local out
    out=$("$work/sim/release/keel-sim" swarm --seeds "$seeds" --jobs "$jobs" 2>/dev/null)
    echo "$out" >>"$log"
    local passed
    passed=$(echo "$out" | sed -n 's/^[0-9]* seeds: \([0-9]*\) pass.*/\1/p')
    local first
    first=$(echo "$out" | awk '$1 ~ /^[0-9]+$/ && $2 ~ /^(SAFETY|LIVENESS|CRASH)$/ { print; exit }')
    local caught=$((seeds - ${passed:-0}))
    if [ -z "$passed" ]; then
        caught=-1
    fi
    local seed reason
    seed=$(echo "$first" | awk '{ print $1 }')
    reason=$(echo "$first" | awk '{ print $2 }')
    if [ -n "$first" ]; then
        reason="$reason: $(echo "$first" | sed 's/.*| {[^}]*} | //' | cut -c1-90)"
    fi
    echo "$caught ${seed:--} $reason"
}

# Runs the unit test a patch names; prints "fails" (it catches the mutant) or "passes".
unit_test() {
    local spec=$1 package filter
    package=$(echo "$spec" | awk '{ print $1 }')
    filter=$(echo "$spec" | awk '{ print $2 }')
    if (cd "$src" && CARGO_TARGET_DIR="$root/target" cargo test -p "$package" --lib -- "$filter") >>"$log" 2>&1; then
        echo passes
    else
        echo fails
    fi
}

started=$(date +%s)
copy_tree
echo "building the unmutated copy..."
if ! sim_build; then
    echo "the unmutated copy does not build: see $log"
    exit 1
fi
read -r base_caught base_seed base_reason < <(sim_swarm)
if [ "$base_caught" != 0 ]; then
    echo "the unmutated copy fails seeds of 1..$seeds ($base_caught, first $base_seed: $base_reason): fix that first"
    exit 1
fi
echo "unmutated: seeds 1..$seeds pass ($(($(date +%s) - started)) s)"

patches=()
if [ ${#names[@]} -eq 0 ]; then
    for p in "$root"/sim/mutants/*.patch; do patches+=("$p"); done
else
    for n in "${names[@]}"; do patches+=("$root/sim/mutants/$n.patch"); done
fi

failures=0
rows=()
for patch in "${patches[@]}"; do
    name=$(basename "$patch" .patch)
    t0=$(date +%s)
    unit_spec=$(sed -n 's/^Unit-test: //p' "$patch" | head -1)
    if ! (cd "$src" && git apply --check "$patch") >>"$log" 2>&1; then
        rows+=("$name | STALE: the patch no longer applies | - | - | -")
        echo "$name: STALE (the patch no longer applies: refresh it)"
        failures=$((failures + 1))
        continue
    fi
    (cd "$src" && git apply "$patch")
    if ! (cd "$src" && git apply -R --check "$patch") >>"$log" 2>&1; then
        rows+=("$name | NOT APPLIED (git apply changed nothing) | - | - | -")
        echo "$name: git apply changed nothing in $src"
        failures=$((failures + 1))
        continue
    fi
    if ! sim_build; then
        rows+=("$name | BUILD FAILED | - | - | -")
        echo "$name: the mutant does not build: see $log"
        failures=$((failures + 1))
        (cd "$src" && git apply -R "$patch")
        continue
    fi
    read -r caught seed reason < <(sim_swarm)
    unit="-"
    if [ "$caught" -le 0 ]; then
        unit="$(unit_test "$unit_spec") ($unit_spec)"
        case "$unit" in
            fails*) ;;
            *) failures=$((failures + 1)) ;;
        esac
    fi
    (cd "$src" && git apply -R "$patch")
    secs=$(($(date +%s) - t0))
    rows+=("$name | $caught/$seeds | $seed | $reason | $unit | ${secs}s")
    echo "$name: caught by $caught of $seeds seeds (first: $seed, $reason); unit test: $unit; ${secs} s"
done

echo
echo "mutant | seeds caught | first seed | first verdict | unit test (when the simulator misses it) | time"
for r in "${rows[@]}"; do echo "$r"; done
echo
echo "$((${#patches[@]} - failures)) of ${#patches[@]} mutants caught; $(($(date +%s) - started)) s in all; log: $log"
[ "$failures" -eq 0 ]
