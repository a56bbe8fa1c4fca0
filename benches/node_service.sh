#!/usr/bin/env bash
# The node as a service, side by side in one run on the same space:
#  - a small gated query as `kexin query` to a warm node server (client
#    process start, TLS link, query) against the same query as a whole
#    in-process `kexin query --local` (process start, opening the node,
#    query): medians of interleaved pairs;
#  - queries per second of concurrent small gated queries to the warm node
#    (four researchers' places, 32 clients at once).
#
#   bash benches/node_service.sh                 # 20 000 patients, 15 pairs
#   PATIENTS=2000 PAIRS=31 bash benches/node_service.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kexin-target}"
PATIENTS="${PATIENTS:-20000}"
PAIRS="${PAIRS:-15}"
BURST="${BURST:-96}"
KEXIN="$CARGO_TARGET_DIR/release/kexin"
cargo build --release --bin kexin
DIR="$(mktemp -d)"
trap 'kill "$NODE" 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$KEXIN" gen --out "$DIR" --hospitals 1 --patients "$PATIENTS" --seed 1 >/dev/null
# Measure the work, not the padding to a quantum.
sed -i 's/^response_quantum_ms = .*/response_quantum_ms = 0/' "$DIR/space.toml"
"$KEXIN" node --space "$DIR" --node h1 > "$DIR/node.log" 2>/dev/null &
NODE=$!
until grep -q " ready on " "$DIR/node.log"; do sleep 0.1; done
SQL="SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex"
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
remote=(); local_=()
for _ in $(seq "$PAIRS"); do
    remote+=("$(ms "$KEXIN" query --space "$DIR" --scene diabetes-2027 --as alice "$SQL")")
    local_+=("$(ms "$KEXIN" query --local --space "$DIR" --scene diabetes-2027 --as alice "$SQL")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r=$(median "${remote[@]}"); l=$(median "${local_[@]}")
echo "small gated query, $PAIRS interleaved pairs (median): to a warm node ${r} ms, whole in-process run ${l} ms, ratio $(awk "BEGIN {printf \"%.2f\", $l / $r}")x"
# Concurrent: BURST queries from four researchers, each with its eight
# connection places busy (32 clients at once). An answer (released or
# refused) counts; a client that got no answer does not.
t0=$(date +%s%N)
for m in "alice diabetes-2027" "bob service-planning" "grace hk-outcomes" "erin diabetes-2027"; do
    set -- $m
    seq $((BURST / 4)) | KEXIN="$KEXIN" DIR="$DIR" SQL="$SQL" WHO="$1" SCENE="$2" xargs -P 8 -I{} \
        sh -c '"$KEXIN" query --space "$DIR" --as "$WHO" --scene "$SCENE" "$SQL" >/dev/null 2>&1; echo $?' \
        > "$DIR/codes-$1" &
done
wait $(jobs -p | grep -v "^$NODE$") 2>/dev/null || true
t1=$(date +%s%N)
answered=$(cat "$DIR"/codes-* | grep -cv '^1$' || true)
echo "concurrent: $answered of $BURST queries answered, 32 clients at a time, in $(( (t1 - t0) / 1000000 )) ms: $(awk "BEGIN {printf \"%.1f\", $answered * 1e9 / ($t1 - $t0)}") answered queries/s"
