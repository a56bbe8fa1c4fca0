#!/usr/bin/env bash
# WebAssembly UDFs vs the same Rust functions compiled natively, both called
# by DataFusion over the same 10M-row in-memory table (criterion bench
# `benches/udf.rs`), and the per-query instance cost. Prints a ratio table.
#
#   bash benches/udf_compare.sh                        # 10M rows (default)
#   KEXIN_BENCH_ROWS=1000000 bash benches/udf_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
ROWS="${KEXIN_BENCH_ROWS:-10000000}"
bash udfs/build.sh
KEXIN_BENCH_ROWS="$ROWS" cargo bench --bench udf -- --noplot
python3 - "$CARGO_TARGET_DIR/criterion" "$ROWS" <<'PY'
import json, os, sys
base, rows = sys.argv[1], sys.argv[2]
def mean(group, name):
    with open(os.path.join(base, group, name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
group = f"udf_{rows}_rows"
print(f"| UDF ({int(rows):,} rows) | native | wasm | wasm / native |")
print("|---|---|---|---|")
# criterion stores "bmi/native" as the folder "bmi_native".
for d in sorted(os.listdir(os.path.join(base, group))):
    if not d.endswith("_native"):
        continue
    name = d[: -len("_native")]
    n, w = mean(group, f"{name}_native") / 1e6, mean(group, f"{name}_wasm") / 1e6
    print(f"| {name} | {n:.1f} ms | {w:.1f} ms | {w / n:.2f}x |")
fresh = mean("udf_instance", "fresh_session_first_call") / 1e3
warm = mean("udf_instance", "warm_session_call") / 1e3
print(f"\nfresh instance + first call {fresh:.2f} µs; warm call {warm:.2f} µs; instantiation ≈ {fresh - warm:.2f} µs")
PY
