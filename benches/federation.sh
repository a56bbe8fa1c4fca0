#!/usr/bin/env bash
# A federated GROUP BY over three nodes (TLS, secret sharing, joint gate,
# every node's audit append) vs plain DataFusion on the same rows pooled, and
# the secure-aggregation rounds alone, through the criterion bench
# `benches/federation.rs`. Prints the means and the ratio.
#
#   bash benches/federation.sh                     # 3 x 1.1M patients, ~10M admission rows (default)
#   PATIENTS=100000 bash benches/federation.sh     # ~1M rows, quicker
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
PATIENTS="${PATIENTS:-1100000}"
DIR="${BENCH_SPACE:-$CARGO_TARGET_DIR/bench-federation-$PATIENTS}"

cargo build --release --bin kexin
# A space from before federation existed has no node identities: regenerate.
if [ ! -f "$DIR/h3/admissions.parquet" ] || ! grep -q "node-h3" "$DIR/space.toml" 2>/dev/null; then
    "$CARGO_TARGET_DIR/release/kexin" gen --out "$DIR" --hospitals 3 --patients "$PATIENTS" --seed 1 --force
fi
echo "space: $DIR"
KEXIN_BENCH_SPACE="$DIR" cargo bench --bench federation -- --noplot
python3 - "$CARGO_TARGET_DIR/criterion" <<'PY'
import json, os, sys
base = sys.argv[1]
def mean(group, name):
    with open(os.path.join(base, group, name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"] / 1e6
g = "federated_groupby_3_nodes"
plain, fed = mean(g, "plain_datafusion_pooled"), mean(g, "kexin_federated")
persons = mean(g, "plain_datafusion_pooled_with_persons")
print(f"{g}: plain DataFusion pooled {plain:.1f} ms, kexin federated {fed:.1f} ms, ratio {fed / plain:.2f}x")
print(f"{g}: plain DataFusion pooled with COUNT(DISTINCT id_card) {persons:.1f} ms, ratio {fed / persons:.2f}x")
for name in sorted(os.listdir(os.path.join(base, "mpc_round"))):
    if name != "report":
        print(f"mpc_round/{name}: {mean('mpc_round', name):.3f} ms")
PY
