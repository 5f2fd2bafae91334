#!/usr/bin/env bash
# keel's whole test suite: the README's test command, and what CI runs (.ci/run).
# Installs what it needs (cargo-fuzz). Prints a closing "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
fuzz_seconds=${KEEL_FUZZ_SECONDS:-15}
# Property tests (proptest) draw their cases from this fixed seed, in every step below, so that a
# run passes or fails the same way each time; the cases in the checked-in proptest-regressions
# files (every case that ever failed) run first. A plain `cargo test` draws fresh random cases
# (README, "Property tests").
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-1}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Each step's header says how long the run has taken so far: the command must stay under 30 minutes.
step() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "clippy under --cfg madsim (the simulator's code exists only there; in target/sim)"
# keel-sim's modules are cfg(madsim): the step above never sees them. With and without the
# planted-bugs feature, whose branches are dead code without it.
RUSTFLAGS="${RUSTFLAGS:-} --cfg madsim" CARGO_TARGET_DIR="$PWD/target/sim" \
    cargo clippy --workspace --all-targets -- -D warnings
RUSTFLAGS="${RUSTFLAGS:-} --cfg madsim" CARGO_TARGET_DIR="$PWD/target/sim" \
    cargo clippy -p keel-sim --all-targets --features planted-bugs -- -D warnings

step "Kafka clients for the interop tests (kcat, .venv)"
bash .ci/clients.sh

step "unit, property and integration tests (proptest seed $PROPTEST_RNG_SEED)"
cargo test --workspace 2>&1 | tee "$log"

step "simulator tests and planted bugs (--cfg madsim, in target/sim)"
# keel-sim's tests under --cfg madsim, the determinism check included (sim/tests/). The getrandom
# shim that makes raft's election timeouts follow the seed is not a workspace member: its own
# tests run here, in the normal build.
# sim/tests/swarm.rs runs a fixed list of seeds plus eight seeds derived from the commit.
# sim/tests/planted.rs: for each of core::planted's bugs, swarm seeds 1, 2, ... in batches of
# 2, 4, 8, 16, then 20 until one is caught; each must be within 200 seeds. It prints the seed
# that caught each bug. One debug build with the planted-bugs feature serves all of them: no
# bug is active unless a run asks for one (core::planted), so the other tests run the shipped
# logic.
sim_seed_base=$(( 0x$(git rev-parse --short=7 HEAD 2>/dev/null || echo 0) % 1000000 + 1000 ))
echo "simulator seeds from the commit: $sim_seed_base..$((sim_seed_base + 7))"
KEEL_SIM_SEED_BASE="$sim_seed_base" RUSTFLAGS="${RUSTFLAGS:-} --cfg madsim" CARGO_TARGET_DIR="$PWD/target/sim" \
    cargo test -p keel-sim --features planted-bugs 2>&1 | tee -a "$log"
cargo test -p getrandom@0.2 2>&1 | tee -a "$log"

step "fuzz smoke run (${fuzz_seconds}s per target)"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# The fuzz crate is a workspace of its own, with no lock file in git: start it from the main
# workspace's, so that the crates keel ships with are the crates fuzzed (cargo adds the fuzzer's
# own). All targets are built in one cargo run, then each runs.
cp Cargo.lock fuzz/Cargo.lock
(cd fuzz && cargo fuzz build --sanitizer none)
fuzz_passed=0
fuzz_log=$(mktemp)
for target in $(cd fuzz && cargo fuzz list); do
    echo "--- fuzz $target"
    # --sanitizer none: this is a stable toolchain. A crash or a build failure fails the run.
    if ! (cd fuzz && cargo fuzz run --sanitizer none "$target" -- -max_total_time="$fuzz_seconds" -seed=1) >"$fuzz_log" 2>&1; then
        tail -60 "$fuzz_log"
        echo "fuzz target $target failed: inputs that crash it are in fuzz/artifacts/$target"
        exit 1
    fi
    grep -E '^Done' "$fuzz_log"
    fuzz_passed=$((fuzz_passed + 1))
done

read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
printf '\nfuzz: %d passed, 0 failed\n' "$fuzz_passed"
printf 'whole test command: %d s\n' "$SECONDS"
printf 'keel: %d passed, %d failed\n' "$((passed + fuzz_passed))" "$failed"
