//! WebAssembly UDFs vs the same functions compiled natively, both called by
//! DataFusion over the same in-memory table, plus the per-query cost of a
//! fresh instance.
//!
//! The native side compiles the very same Rust source as the wasm modules
//! (`udfs/*/src/lib.rs`, included below), registered with `create_udf`, so
//! the ratio is the sandbox's cost: copying batches in and out of guest
//! memory, validating the output, fuel and epoch checks, and Cranelift's
//! code versus LLVM's. Rows: `KEXIN_BENCH_ROWS` (default 10,000,000). The
//! modules come from `udfs/target/wasm` (run `bash udfs/build.sh` first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "a bench aborts on setup failure and compares against plain DataFusion"
)]

#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/age_band/src/lib.rs"]
mod age_band;
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/bmi/src/lib.rs"]
mod bmi;
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/charlson/src/lib.rs"]
mod charlson;
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/eag/src/lib.rs"]
mod eag;
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/egfr/src/lib.rs"]
mod egfr;
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    clippy::unnecessary_map_or,
    reason = "the UDF's own source, compiled natively for the wasm-vs-native comparison; the bench calls part of it"
)]
#[path = "../udfs/geomean/src/lib.rs"]
mod geomean;

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{
    ArrayRef, AsArray, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Accumulator, ColumnarValue, Volatility, create_udaf, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext};
use kexin_sandbox::{Limits, Sandbox};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 8192;

fn rows() -> usize {
    std::env::var("KEXIN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

fn table(n: usize) -> Vec<RecordBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let codes = [
        "I21.9", "E11.2", "J18.9", "C34.1", "N18.4", "I10", "C78.0", "K25.0",
    ];
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let m = BATCH.min(n - start);
        let f = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(
                (0..m).map(|_| rng.random_range(lo..hi)),
            ))
        };
        let cols: Vec<ArrayRef> = vec![
            f(&mut rng, 40.0, 130.0),
            f(&mut rng, 140.0, 200.0),
            f(&mut rng, 40.0, 400.0),
            Arc::new(Int32Array::from_iter_values(
                (0..m).map(|_| rng.random_range(18..95)),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..m).map(|_| if rng.random_bool(0.5) { "F" } else { "M" }),
            )),
            f(&mut rng, 4.0, 14.0),
            Arc::new(Date32Array::from_iter_values(
                (0..m).map(|_| rng.random_range(-15_000..20_000)),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..m).map(|_| codes[rng.random_range(0..codes.len())]),
            )),
        ];
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("weight", DataType::Float64, false),
            datafusion::arrow::datatypes::Field::new("height", DataType::Float64, false),
            datafusion::arrow::datatypes::Field::new("creat", DataType::Float64, false),
            datafusion::arrow::datatypes::Field::new("age", DataType::Int32, false),
            datafusion::arrow::datatypes::Field::new("sex", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("hba1c", DataType::Float64, false),
            datafusion::arrow::datatypes::Field::new("birth", DataType::Date32, false),
            datafusion::arrow::datatypes::Field::new("icd", DataType::Utf8, false),
        ]));
        out.push(RecordBatch::try_new(schema, cols).unwrap());
        start += m;
    }
    out
}

fn arrays(args: &[ColumnarValue]) -> Vec<ArrayRef> {
    let n = args
        .iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1);
    args.iter().map(|a| a.to_array(n).unwrap()).collect()
}

/// The geomean aggregate's own update/merge/finish, natively.
#[derive(Debug)]
struct NativeGeomean([f64; 2]);

impl Accumulator for NativeGeomean {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        for v in values[0].as_primitive::<Float64Type>().iter() {
            geomean::update(&mut self.0, v);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        Ok(ScalarValue::Float64(geomean::finish(&self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Float64(Some(self.0[0])),
            ScalarValue::Float64(Some(self.0[1])),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        let (a, b) = (
            states[0].as_primitive::<Float64Type>(),
            states[1].as_primitive::<Float64Type>(),
        );
        for i in 0..a.len() {
            geomean::merge(&mut self.0, &[a.value(i), b.value(i)]);
        }
        Ok(())
    }
}

/// The native versions: the same source as the modules, compiled here.
fn native_udfs(ctx: &SessionContext) {
    ctx.register_udaf(create_udaf(
        "geomean",
        vec![DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(NativeGeomean([0.0, 0.0])))),
        Arc::new(vec![DataType::Float64, DataType::Float64]),
    ));
    let f64out = |v: Vec<Option<f64>>| -> ColumnarValue {
        ColumnarValue::Array(Arc::new(Float64Array::from(v)))
    };
    ctx.register_udf(create_udf(
        "bmi",
        vec![DataType::Float64, DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(move |args| {
            let a = arrays(args);
            let (w, h) = (
                a[0].as_primitive::<Float64Type>(),
                a[1].as_primitive::<Float64Type>(),
            );
            Ok(f64out(
                w.values()
                    .iter()
                    .zip(h.values())
                    .map(|(w, h)| bmi::bmi(*w, *h))
                    .collect(),
            ))
        }),
    ));
    ctx.register_udf(create_udf(
        "hba1c_to_eag",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(move |args| {
            let a = arrays(args);
            let x = a[0].as_primitive::<Float64Type>();
            Ok(f64out(
                x.values().iter().map(|v| eag::hba1c_to_eag(*v)).collect(),
            ))
        }),
    ));
    ctx.register_udf(create_udf(
        "egfr_ckd_epi_2021",
        vec![DataType::Float64, DataType::Int32, DataType::Utf8],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(move |args| {
            let a = arrays(args);
            let c = a[0].as_primitive::<Float64Type>();
            let age = a[1].as_primitive::<Int32Type>();
            let sex = a[2].as_string::<i32>();
            Ok(f64out(
                (0..c.len())
                    .map(|i| egfr::egfr_ckd_epi_2021(c.value(i), age.value(i), sex.value(i)))
                    .collect(),
            ))
        }),
    ));
    ctx.register_udf(create_udf(
        "age_band",
        vec![DataType::Date32, DataType::Date32],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args| {
            let a = arrays(args);
            let (b, at) = (
                a[0].as_primitive::<Date32Type>(),
                a[1].as_primitive::<Date32Type>(),
            );
            let out: StringArray = (0..b.len())
                .map(|i| age_band::age_band(b.value(i), at.value(i)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
    ctx.register_udf(create_udf(
        "charlson_weight",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(move |args| {
            let a = arrays(args);
            let s = a[0].as_string::<i32>();
            let out: Int32Array = s
                .iter()
                .map(|c| c.and_then(charlson::charlson_weight))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
}

/// (bench name, module file, SQL run on both sides).
const CASES: &[(&str, &str, &str)] = &[
    ("bmi", "bmi", "SELECT sum(bmi(weight, height)) FROM t"),
    ("eag", "eag", "SELECT sum(hba1c_to_eag(hba1c)) FROM t"),
    (
        "egfr",
        "egfr",
        "SELECT sum(egfr_ckd_epi_2021(creat, age, sex)) FROM t",
    ),
    (
        "age_band",
        "age_band",
        "SELECT age_band(birth, DATE '2026-01-01') AS b, count(*) FROM t GROUP BY b",
    ),
    (
        "charlson",
        "charlson",
        "SELECT sum(charlson_weight(icd)) FROM t",
    ),
    (
        "geomean_aggregate",
        "geomean",
        "SELECT geomean(weight) FROM t",
    ),
];

fn context(batches: &[RecordBatch]) -> SessionContext {
    // One partition per core, as a node runs.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let schema = batches[0].schema();
    let parts: Vec<Vec<RecordBatch>> = (0..2)
        .map(|p| batches.iter().skip(p).step_by(2).cloned().collect())
        .collect();
    ctx.register_table("t", Arc::new(MemTable::try_new(schema, parts).unwrap()))
        .unwrap();
    ctx
}

fn module_bytes(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("udfs/target/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|_| panic!("{} missing: run bash udfs/build.sh", p.display()))
}

fn bench(c: &mut Criterion) {
    let n = rows();
    let batches = table(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(Limits::default()).unwrap();
    let native = context(&batches);
    native_udfs(&native);

    let mut g = c.benchmark_group(format!("udf_{n}_rows"));
    g.sample_size(10);
    for (name, file, sql) in CASES {
        let module = sandbox.load(&module_bytes(file)).unwrap();
        let run = |ctx: &SessionContext, sql: &str| {
            rt.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() })
        };
        g.bench_function(format!("{name}/native"), |b| b.iter(|| run(&native, sql)));
        g.bench_function(format!("{name}/wasm"), |b| {
            b.iter(|| {
                // A fresh session per query, as a node does.
                let wasm = context(&batches);
                let udfs = kexin_engine::udf::QueryUdfs::bind(
                    std::slice::from_ref(&module),
                    sandbox.limits().call,
                )
                .unwrap();
                for f in udfs.scalars {
                    wasm.register_udf(f);
                }
                for f in udfs.aggregates {
                    wasm.register_udaf(f);
                }
                run(&wasm, sql)
            })
        });
    }
    g.finish();

    // Per-query instance cost: a fresh session's first (one-row) call
    // instantiates; a warm session's call does not.
    let module = sandbox.load(&module_bytes("bmi")).unwrap();
    let one: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![70.0])),
        Arc::new(Float64Array::from(vec![175.0])),
    ];
    let mut g = c.benchmark_group("udf_instance");
    g.bench_function("fresh_session_first_call", |b| {
        b.iter(|| {
            let s = module.session(sandbox.limits().call);
            s.call_scalar("bmi", &one, 1).unwrap()
        })
    });
    let warm = module.session(sandbox.limits().call);
    g.bench_function("warm_session_call", |b| {
        b.iter(|| warm.call_scalar("bmi", &one, 1).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
