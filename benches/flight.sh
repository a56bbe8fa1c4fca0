#!/usr/bin/env bash
# Researchers over Arrow Flight SQL (ADBC), side by side in one run on one
# space (see benches/flight.py for what each line measures):
#   bash benches/flight.sh                    # 20 000 patients, 15 pairs
#   PATIENTS=2000 PAIRS=31 bash benches/flight.sh
# Needs the Python client's packages (.ci/setup) and, for the plain
# DataFusion baseline, `pip install datafusion` (the Python bindings of the
# same DataFusion 55).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
export PATIENTS="${PATIENTS:-20000}" PAIRS="${PAIRS:-15}" BURST="${BURST:-96}"
export KEXIN="$CARGO_TARGET_DIR/release/kexin"
cargo build --release --bin kexin
export DIR="$(mktemp -d)"
trap 'kill "$NODE" 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$KEXIN" gen --out "$DIR" --hospitals 1 --patients "$PATIENTS" --seed 1 >/dev/null
# Measure the work, not the padding to a quantum.
sed -i 's/^response_quantum_ms = .*/response_quantum_ms = 0/' "$DIR/space.toml"
"$KEXIN" node --space "$DIR" --node h1 --flight 127.0.0.1:0 > "$DIR/node.log" 2>/dev/null &
NODE=$!
until grep -q " ready on " "$DIR/node.log"; do sleep 0.1; done
export FLIGHT="$(sed -n 's/.* flight on //p' "$DIR/node.log")"
PYTHONPATH=clients/python python3 benches/flight.py
