#!/usr/bin/env bash
# Side-by-side: the gated kexin query vs plain DataFusion on the same
# admissions Parquet file (about 10 million rows by default), and DP mode vs
# the same query threshold-only, through the criterion bench
# `benches/gate.rs`. Prints the means and ratios, then times the same SQL in
# DuckDB (installed with pip if missing) for scale.
#
#   bash benches/compare.sh                      # 3.3M patients, ~10M admission rows (default)
#   PATIENTS=300000 bash benches/compare.sh      # ~1M rows, quicker
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
PATIENTS="${PATIENTS:-3300000}"
DIR="${BENCH_SPACE:-$CARGO_TARGET_DIR/bench-space-$PATIENTS}"

cargo build --release --bin kexin
# A space from before the registry existed has no contracts: regenerate.
# One from before response padding (and erin's DP-only organisation) would
# not load: regenerate it too.
if [ ! -f "$DIR/h1/admissions.parquet" ] || [ ! -f "$DIR/registry/kexin.db" ] \
    || ! grep -q "response_quantum_ms" "$DIR/space.toml"; then
    rm -rf "$DIR"
    "$CARGO_TARGET_DIR/release/kexin" gen --out "$DIR" --hospitals 1 --patients "$PATIENTS" --seed 1
fi
# The bench measures the work, so answers are not padded to a quantum.
sed -i 's/^response_quantum_ms = .*/response_quantum_ms = 0/' "$DIR/space.toml"
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
for group in sorted(d for d in os.listdir(base) if d.startswith("dp_admissions_")):
    thr, dp = mean(group, "bench-threshold"), mean(group, "bench-dp")
    print(f"{group}: threshold-only {thr:.1f} ms, DP mode {dp:.1f} ms, ratio {dp / thr:.2f}x")
PY

# DuckDB on the same file, same SQL (plain, no policy): a second reference.
python3 -c "import duckdb" 2>/dev/null || pip install -q duckdb
python3 - "$DIR/h1/admissions.parquet" "$CARGO_TARGET_DIR/criterion" <<'PY'
import json, os, sys, time
import duckdb
path, base = sys.argv[1], sys.argv[2]
queries = {
    "counts": "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    "sums_with_dominance": "SELECT department, count(*) AS n, avg(cost) AS mean_cost, sum(length_of_stay) AS bed_days FROM admissions GROUP BY department",
}
con = duckdb.connect()
con.execute(f"CREATE VIEW admissions AS SELECT * FROM read_parquet('{path}')")
for name, sql in queries.items():
    con.execute(sql).fetchall()
    runs = []
    for _ in range(10):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        runs.append(time.perf_counter() - t)
    duck = sum(runs) / len(runs) * 1e3
    with open(os.path.join(base, f"groupby_admissions_{name}", "kexin_gated", "new", "estimates.json")) as f:
        gated = json.load(f)["mean"]["point_estimate"] / 1e6
    print(f"groupby_admissions_{name}: DuckDB {duck:.1f} ms, kexin gated {gated:.1f} ms, ratio {gated / duck:.2f}x")
PY
