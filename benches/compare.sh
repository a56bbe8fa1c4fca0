#!/usr/bin/env bash
# Side-by-side: the gated kexin query vs plain DataFusion on the same
# admissions Parquet file (about 10 million rows by default), through the
# criterion bench `benches/gate.rs`. Prints both means and the ratio.
#
#   bash benches/compare.sh                      # 3.3M patients, ~10M admission rows (default)
#   PATIENTS=300000 bash benches/compare.sh      # ~1M rows, quicker
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
PATIENTS="${PATIENTS:-3300000}"
DIR="${BENCH_SPACE:-$CARGO_TARGET_DIR/bench-space-$PATIENTS}"

cargo build --release --bin kexin
if [ ! -f "$DIR/h1/admissions.parquet" ]; then
    "$CARGO_TARGET_DIR/release/kexin" gen --out "$DIR" --hospitals 1 --patients "$PATIENTS" --seed 1
fi
echo "space: $DIR"
KEXIN_BENCH_SPACE="$DIR" cargo bench --bench gate -- --noplot
python3 - "$CARGO_TARGET_DIR/criterion" <<'PY'
import json, sys, os
base = sys.argv[1]
def mean(group, name):
    with open(os.path.join(base, group, name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"] / 1e6
for group in sorted(d for d in os.listdir(base) if d.startswith("groupby_admissions_")):
    plain, gated = mean(group, "plain_datafusion"), mean(group, "kexin_gated")
    print(f"{group}: plain DataFusion {plain:.1f} ms, kexin gated {gated:.1f} ms, ratio {gated / plain:.2f}x")
PY
