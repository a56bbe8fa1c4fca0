#!/usr/bin/env bash
# The gated paths side by side with their baselines, in one run
# (`benches/paths.rs`): a threshold-scene count and a dominance-rule sum vs
# plain DataFusion, DP mode vs threshold-only, a consent scene vs the same
# scene without consent (on one hospital with ~10M admission rows), and a
# federated GROUP BY over three node servers vs plain DataFusion on the
# same rows pooled (3 × ~3.3M rows). Medians of interleaved pairs.
#
#   bash benches/paths.sh                                  # the README's sizes
#   PATIENTS=300000 FED_PATIENTS=100000 bash benches/paths.sh   # ~1M rows, quicker
#   PAIRS=9 bash benches/paths.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
PATIENTS="${PATIENTS:-3300000}"
FED_PATIENTS="${FED_PATIENTS:-1100000}"
ONE="$CARGO_TARGET_DIR/bench-paths-1x$PATIENTS"
THREE="$CARGO_TARGET_DIR/bench-paths-3x$FED_PATIENTS"

cargo build --release --bin kexin
kexin="$CARGO_TARGET_DIR/release/kexin"
# Spaces from before `kexin dataset add` have no loaded copies: regenerate.
for spec in "$ONE 1 $PATIENTS" "$THREE 3 $FED_PATIENTS"; do
    set -- $spec
    if [ ! -f "$1/h1/data/admissions.parquet" ]; then
        "$kexin" gen --out "$1" --hospitals "$2" --patients "$3" --seed 1 --force
    fi
done
KEXIN_BENCH_SPACE="$ONE" KEXIN_BENCH_FEDERATION="$THREE" KEXIN_PAIRS="${PAIRS:-7}" \
    KEXIN_PATHS_JSON="$CARGO_TARGET_DIR/paths.json" cargo bench --bench paths
