#!/usr/bin/env bash
# Bring your own data, end to end, on a public data set: three hospitals
# load their own exports of the 442-patient diabetes study (prepare.py),
# and a researcher asks each hospital under a scene.
#
#   bash docs/examples/diabetes/run.sh DIR [KEXIN]
#
# DIR must not exist yet. KEXIN is the kexin binary (default: `kexin` on
# PATH). Needs python3 with pandas, pyarrow and scikit-learn.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
kexin=${2:-kexin}
if [ -e "$dir" ]; then
    echo "$dir exists: choose a new folder" >&2
    exit 1
fi
mkdir -p "$dir/keys"

# 1. Each hospital's export (Parquet from h1 and h2, CSV from h3).
python3 "$here/prepare.py" "$dir"

# 2. The policy, with the operator's public key as the space's trust root.
operator=$("$kexin" id new --out "$dir/keys/operator.key" --member operator)
sed "s/^nodes = \[\"h1\", \"h2\", \"h3\"\]$/&\noperator_key = \"$operator\"/" \
    "$here/space.toml" > "$dir/space.toml"

# 3. Each hospital's data holder loads its own files: checked against the
#    declared columns, timestamps converted to dates, each row given the
#    node's person ordinal, the copy digested and the load audited.
"$kexin" dataset add --space "$dir" --node h1 --dataset diabetes --as hu
"$kexin" dataset add --space "$dir" --node h2 --dataset diabetes --as lin
"$kexin" dataset add --space "$dir" --node h3 --dataset diabetes --as zhao "$dir/h3/diabetes.csv"
"$kexin" dataset list --space "$dir" --node h3

# 4. The operator certifies the researcher.
rita=$("$kexin" id new --out "$dir/keys/rita.key" --member rita)
"$kexin" id issue --space "$dir" --member rita --role researcher --org org:lab --public-key "$rita" >/dev/null

# 5. The researcher asks each hospital; only gated aggregates come back.
for node in h1 h2 h3; do
    "$kexin" query --space "$dir" --node "$node" --scene diabetes-study --as rita --local \
        --format "${KEXIN_FORMAT:-table}" \
        "SELECT sex, count(*) AS patients, avg(bmi) AS bmi, avg(progression) AS progression
           FROM diabetes GROUP BY sex ORDER BY sex"
done
