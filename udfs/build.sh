#!/usr/bin/env bash
# Build every UDF in this workspace to udfs/target/wasm/<name>.wasm.
#
# Uses the rustup wasm32-unknown-unknown target when it is installed;
# otherwise Debian's rustc with libstd-rust-dev-wasm32
# (`apt-get install -y rustc libstd-rust-dev-wasm32`), calling
# /usr/bin/rustc directly (the SDK and UDFs build with Rust 1.63).
#
# The guest's shadow stack is 64 KiB instead of rustc's 1 MiB default: UDFs
# need little, and a small initial memory makes each query's fresh instance
# cheaper to set up and reset.
set -euo pipefail
cd "$(dirname "$0")"
OUT=target/wasm
mkdir -p "$OUT"
UDFS=(bmi egfr eag age_band charlson geomean)

if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "udfs: building with rustup's wasm32-unknown-unknown target"
    CARGO_TARGET_DIR=target RUSTFLAGS="-C link-arg=-zstack-size=65536" cargo build --release --target wasm32-unknown-unknown --workspace --quiet
    for u in "${UDFS[@]}"; do
        cp "target/wasm32-unknown-unknown/release/kexin_udf_${u}.wasm" "$OUT/$u.wasm"
    done
elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/wasm32-unknown-unknown ]; then
    echo "udfs: building with $(/usr/bin/rustc --version) (Debian) for wasm32-unknown-unknown"
    RUSTC=(/usr/bin/rustc --edition 2021 --target wasm32-unknown-unknown
           -C opt-level=3 -C panic=abort -C codegen-units=1 -C debuginfo=0)
    "${RUSTC[@]}" --crate-type rlib --crate-name kexin_guest sdk/src/lib.rs \
        -o "$OUT/libkexin_guest.rlib"
    for u in "${UDFS[@]}"; do
        "${RUSTC[@]}" --crate-type cdylib --crate-name "kexin_udf_${u}" \
            -C lto -C strip=symbols -C link-arg=-zstack-size=65536 \
            --extern kexin_guest="$OUT/libkexin_guest.rlib" -L "$OUT" \
            "$u/src/lib.rs" -o "$OUT/$u.wasm"
    done
else
    echo "udfs: no wasm32-unknown-unknown toolchain; run: apt-get install -y rustc libstd-rust-dev-wasm32" >&2
    exit 1
fi
ls -l "$OUT"/*.wasm | awk '{print "udfs:", $5, $9}'
