//! `kexin gen`: a deterministic synthetic medical data space.
//!
//! Persons are numbered globally and every attribute of person `i` is drawn
//! from a generator seeded by `(seed, i)`, so a person who is a patient of two
//! hospitals has the same ID number, name and birth date in both. Hospital `h`
//! treats persons `[h·0.85·N, h·0.85·N + N)`: neighbouring hospitals share
//! about 15% of their patients. Hospitals are generated in parallel, each in
//! blocks written as Parquet row groups.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use indicatif::{ProgressBar, ProgressStyle};
use kexin_engine::mask::days_from_civil;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod example;
pub use example::{federation_toml, space_toml};

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub hospitals: usize,
    pub patients: usize,
    pub seed: u64,
    pub csv: bool,
    pub quiet: bool,
    /// Generate the FHE key holder's keys (a few seconds) when the policy
    /// has an FHE-gated scene; `kexin fhe keygen` does it later otherwise.
    pub fhe_keys: bool,
}

/// Hubei county-level codes (GB/T 2260) with rough population weights.
const REGIONS: &[(&str, u32)] = &[
    ("420102", 9),  // 武汉 江岸区
    ("420103", 7),  // 江汉区
    ("420104", 8),  // 硚口区
    ("420105", 7),  // 汉阳区
    ("420106", 11), // 武昌区
    ("420111", 10), // 洪山区
    ("420112", 7),  // 东西湖区
    ("420115", 8),  // 江夏区
    ("420202", 3),  // 黄石 黄石港区
    ("420302", 3),  // 十堰 茅箭区
    ("420502", 4),  // 宜昌 西陵区
    ("420602", 4),  // 襄阳 襄城区
    ("420606", 4),  // 樊城区
    ("420802", 3),  // 荆门 东宝区
    ("420902", 3),  // 孝感 孝南区
    ("421002", 3),  // 荆州 沙市区
    ("421102", 3),  // 黄冈 黄州区
    ("421202", 2),  // 咸宁 咸安区
    ("421303", 2),  // 随州 曾都区
    ("422801", 2),  // 恩施市
];

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀", "霞", "平", "刚", "桂", "英", "华", "建", "文", "辉", "玲", "红", "鹏",
];

/// ICD-10 codes: (code, department, weight for persons without the matching
/// chronic condition, median cost in yuan).
const DIAGNOSES: &[(&str, &str, u32, f64)] = &[
    ("J18.9", "respiratory", 14, 8_000.0),  // pneumonia
    ("I10", "cardiology", 10, 5_000.0),     // essential hypertension
    ("I21.9", "cardiology", 3, 45_000.0),   // acute myocardial infarction
    ("I63.9", "neurology", 4, 30_000.0),    // cerebral infarction
    ("I50.9", "cardiology", 3, 15_000.0),   // heart failure
    ("J44.1", "respiratory", 5, 12_000.0),  // COPD with exacerbation
    ("K35.8", "surgery", 4, 12_000.0),      // acute appendicitis
    ("K80.2", "surgery", 4, 18_000.0),      // gallstones
    ("O80", "obstetrics", 6, 6_000.0),      // single spontaneous delivery
    ("S72.0", "orthopedics", 2, 40_000.0),  // fracture of femoral neck
    ("M17.1", "orthopedics", 3, 50_000.0),  // knee osteoarthritis
    ("C34.9", "oncology", 2, 80_000.0),     // lung cancer
    ("C16.9", "oncology", 1, 70_000.0),     // stomach cancer
    ("N18.4", "nephrology", 1, 25_000.0),   // CKD stage 4
    ("E11.9", "endocrinology", 2, 7_000.0), // type 2 diabetes without complications
    ("E11.6", "endocrinology", 1, 12_000.0),
    ("A09", "infectious", 5, 3_000.0), // gastroenteritis
    ("J06.9", "respiratory", 8, 1_500.0),
];

/// The persons of the synthetic population.
#[derive(Debug, Clone)]
struct Person {
    id_card: String,
    name: String,
    sex: &'static str,
    birth: i32,
    age: i32,
    phone: String,
    region: &'static str,
    diabetic: bool,
    ckd: bool,
    hypertensive: bool,
    height_cm: f64,
    weight_kg: f64,
}

/// GB 11643-1999 check character: one implementation, in the engine.
pub use kexin_engine::identity::gb11643_check;

fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut x = rng.random_range(0..total.max(1));
    for it in items {
        let w = weight(it);
        if x < w {
            return it;
        }
        x -= w;
    }
    &items[items.len() - 1]
}

fn person(seed: u64, i: u64) -> Person {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let region = weighted(&mut rng, REGIONS, |r| r.1).0;
    // Ages: a broad adult-heavy distribution, 0..=95.
    let age = {
        let a: f64 = rng.random::<f64>() * 0.6 + rng.random::<f64>() * 0.6;
        ((a / 1.2) * 96.0) as i32
    };
    let ref_day = days_from_civil(2026, 1, 1) as i32;
    let birth = ref_day - age * 365 - rng.random_range(0..365);
    let (y, m, d) = kexin_engine::mask::civil_from_days(birth as i64);
    let male = rng.random_bool(0.5);
    // Sequence code: last digit odd for men, even for women (GB 11643).
    let seq = rng.random_range(0..50u32) * 10 + (i % 5) as u32 * 2 + u32::from(male);
    let first17 = format!("{region}{y:04}{m:02}{d:02}{:03}", seq % 1000);
    let check = gb11643_check(&first17).unwrap_or('0');
    let surname = SURNAMES[rng.random_range(0..SURNAMES.len())];
    let mut name = surname.to_string();
    for _ in 0..rng.random_range(1..=2) {
        name.push_str(GIVEN[rng.random_range(0..GIVEN.len())]);
    }
    let prefix = [
        "135", "136", "138", "139", "150", "151", "158", "177", "186", "189",
    ][rng.random_range(0..10)];
    let phone = format!("{prefix}{:08}", rng.random_range(0..100_000_000u32));
    let risk = (age as f64 / 95.0).powf(1.5);
    let diabetic = age >= 25 && rng.random_bool((0.25 * risk).min(0.3));
    let ckd = age >= 40 && rng.random_bool(0.06 * risk);
    let hypertensive = age >= 30 && rng.random_bool((0.5 * risk).min(0.6));
    // Measured at registration: adult height around Chinese means (men 170,
    // women 158 cm), children on a rough growth curve; weight from a BMI
    // around 23.5 (higher with diabetes).
    let adult = if male { 170.0 } else { 158.0 } + 6.5 * gauss(&mut rng);
    let height_cm = if age >= 18 {
        adult
    } else {
        (52.0 + f64::from(age) * 6.3).min(adult)
    };
    let bmi = if age >= 18 {
        23.5 + 3.2 * gauss(&mut rng) + if diabetic { 2.5 } else { 0.0 }
    } else {
        17.0 + 2.0 * gauss(&mut rng)
    }
    .max(13.0);
    let weight_kg = bmi * (height_cm / 100.0).powi(2);
    Person {
        id_card: format!("{first17}{check}"),
        name,
        sex: if male { "M" } else { "F" },
        birth,
        age,
        phone,
        region,
        diabetic,
        ckd,
        hypertensive,
        height_cm: (height_cm * 10.0).round() / 10.0,
        weight_kg: (weight_kg * 10.0).round() / 10.0,
    }
}

fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

struct Sink {
    parquet: ArrowWriter<File>,
    csv: Option<datafusion::arrow::csv::Writer<File>>,
}

impl Sink {
    fn new(dir: &Path, name: &str, schema: &SchemaRef, csv: bool) -> Result<Sink> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let f = File::create(dir.join(format!("{name}.parquet")))?;
        let parquet = ArrowWriter::try_new(f, Arc::clone(schema), Some(props))?;
        let csv = if csv {
            Some(datafusion::arrow::csv::Writer::new(File::create(
                dir.join(format!("{name}.csv")),
            )?))
        } else {
            None
        };
        Ok(Sink { parquet, csv })
    }
    fn write(&mut self, b: &RecordBatch) -> Result<()> {
        self.parquet.write(b)?;
        if let Some(c) = &mut self.csv {
            c.write(b)?;
        }
        Ok(())
    }
    fn close(self) -> Result<()> {
        self.parquet.close()?;
        Ok(())
    }
}

/// Generate one hospital's three tables. Returns (patients, admissions, labs).
fn hospital(out: &Path, h: usize, opts: &GenOptions, bar: &ProgressBar) -> Result<(u64, u64, u64)> {
    let name = format!("h{}", h + 1);
    let dir = out.join(&name);
    std::fs::create_dir_all(&dir)?;
    let pat_schema = schema(&[
        ("id_card", DataType::Utf8),
        ("name", DataType::Utf8),
        ("sex", DataType::Utf8),
        ("birth_date", DataType::Date32),
        ("age", DataType::Int32),
        ("phone", DataType::Utf8),
        ("region", DataType::Utf8),
        ("hospital", DataType::Utf8),
        ("height_cm", DataType::Float64),
        ("weight_kg", DataType::Float64),
    ]);
    let adm_schema = schema(&[
        ("admission_id", DataType::Int64),
        ("id_card", DataType::Utf8),
        ("admit_date", DataType::Date32),
        ("diagnosis", DataType::Utf8),
        ("department", DataType::Utf8),
        ("cost", DataType::Float64),
        ("length_of_stay", DataType::Int32),
    ]);
    let lab_schema = schema(&[
        ("id_card", DataType::Utf8),
        ("test", DataType::Utf8),
        ("value", DataType::Float64),
        ("unit", DataType::Utf8),
        ("taken_date", DataType::Date32),
    ]);
    let mut pat = Sink::new(&dir, "patients", &pat_schema, opts.csv)?;
    let mut adm = Sink::new(&dir, "admissions", &adm_schema, opts.csv)?;
    let mut lab = Sink::new(&dir, "labs", &lab_schema, opts.csv)?;
    let first = (h as f64 * 0.85 * opts.patients as f64) as u64;
    let day0 = days_from_civil(2020, 1, 1) as i32;
    let day1 = days_from_civil(2026, 10, 31) as i32;
    let (mut n_adm, mut n_lab) = (0u64, 0u64);
    let block = 32_768usize;
    let mut start = 0usize;
    while start < opts.patients {
        let end = (start + block).min(opts.patients);
        let mut rng = ChaCha8Rng::seed_from_u64(
            opts.seed ^ ((h as u64) << 48) ^ (start as u64).wrapping_mul(31),
        );
        let people: Vec<Person> = (start..end)
            .map(|k| person(opts.seed, first + k as u64))
            .collect();

        let cols: Vec<ArrayRef> = vec![
            Arc::new(
                people
                    .iter()
                    .map(|p| Some(p.id_card.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                people
                    .iter()
                    .map(|p| Some(p.name.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(people.iter().map(|p| Some(p.sex)).collect::<StringArray>()),
            Arc::new(
                people
                    .iter()
                    .map(|p| Some(p.birth))
                    .collect::<Date32Array>(),
            ),
            Arc::new(people.iter().map(|p| Some(p.age)).collect::<Int32Array>()),
            Arc::new(
                people
                    .iter()
                    .map(|p| Some(p.phone.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                people
                    .iter()
                    .map(|p| Some(p.region))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                std::iter::repeat_n(Some(name.as_str()), people.len()).collect::<StringArray>(),
            ),
            Arc::new(Float64Array::from_iter_values(
                people.iter().map(|p| p.height_cm),
            )),
            Arc::new(Float64Array::from_iter_values(
                people.iter().map(|p| p.weight_kg),
            )),
        ];
        pat.write(&RecordBatch::try_new(Arc::clone(&pat_schema), cols)?)?;

        // Admissions: 1 + a geometric-like count, more for the chronically ill.
        let (mut a_id, mut a_card, mut a_date, mut a_diag, mut a_dept, mut a_cost, mut a_los) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        // Labs.
        let (mut l_card, mut l_test, mut l_val, mut l_unit, mut l_date) =
            (vec![], vec![], vec![], vec![], vec![]);
        for p in &people {
            let chronic = u32::from(p.diabetic) + u32::from(p.ckd) + u32::from(p.hypertensive);
            let mut k = 1 + rng.random_range(0..=3) + chronic;
            if rng.random_bool(0.1) {
                k += rng.random_range(1..=4);
            }
            for _ in 0..k {
                let (code, dept, _, median) = if p.diabetic && rng.random_bool(0.35) {
                    *weighted(&mut rng, &DIAGNOSES[14..16], |d| d.2)
                } else if p.ckd && rng.random_bool(0.3) {
                    DIAGNOSES[13]
                } else if p.hypertensive && rng.random_bool(0.25) {
                    DIAGNOSES[1]
                } else {
                    // Chronic-disease codes only for persons who have the disease.
                    *weighted(&mut rng, DIAGNOSES, |d| {
                        let e11 = d.0.starts_with("E11") && !p.diabetic;
                        let n18 = d.0.starts_with("N18") && !p.ckd;
                        if e11 || n18 { 0 } else { d.2 }
                    })
                };
                // Log-normal cost around the median; an occasional outlier.
                let z: f64 = (0..4).map(|_| rng.random::<f64>()).sum::<f64>() - 2.0;
                let mut cost = median * (0.6 * z).exp();
                if rng.random_bool(0.001) {
                    cost *= 20.0;
                }
                a_id.push(((h as i64 + 1) << 40) + n_adm as i64 + a_id.len() as i64);
                a_card.push(p.id_card.clone());
                a_date.push(rng.random_range(day0..=day1));
                a_diag.push(code);
                a_dept.push(dept);
                a_cost.push((cost * 100.0).round() / 100.0);
                a_los.push(1 + (cost / 3_000.0).sqrt() as i32 + rng.random_range(0..3));
            }
            let tests = 1 + rng.random_range(0..=2) + 2 * u32::from(p.diabetic);
            for _ in 0..tests {
                let (test, unit, v) = match rng.random_range(0..4) {
                    0 => (
                        "hba1c",
                        "%",
                        if p.diabetic {
                            7.6 + 1.3 * gauss(&mut rng)
                        } else {
                            5.4 + 0.4 * gauss(&mut rng)
                        },
                    ),
                    1 => (
                        "glucose",
                        "mmol/L",
                        if p.diabetic {
                            9.0 + 2.5 * gauss(&mut rng)
                        } else {
                            5.2 + 0.7 * gauss(&mut rng)
                        },
                    ),
                    2 => (
                        "creatinine",
                        "umol/L",
                        if p.ckd {
                            260.0 + 80.0 * gauss(&mut rng)
                        } else {
                            80.0 + 15.0 * gauss(&mut rng) + f64::from(u8::from(p.sex == "M")) * 12.0
                        },
                    ),
                    _ => ("ldl", "mmol/L", 2.9 + 0.8 * gauss(&mut rng)),
                };
                l_card.push(p.id_card.clone());
                l_test.push(test);
                l_val.push(((v.max(0.1)) * 10.0).round() / 10.0);
                l_unit.push(unit);
                l_date.push(rng.random_range(day0..=day1));
            }
        }
        n_adm += a_id.len() as u64;
        n_lab += l_card.len() as u64;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(a_id)),
            Arc::new(StringArray::from(a_card)),
            Arc::new(Date32Array::from(a_date)),
            Arc::new(StringArray::from(a_diag)),
            Arc::new(StringArray::from(a_dept)),
            Arc::new(Float64Array::from(a_cost)),
            Arc::new(Int32Array::from(a_los)),
        ];
        adm.write(&RecordBatch::try_new(Arc::clone(&adm_schema), cols)?)?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(l_card)),
            Arc::new(StringArray::from(l_test)),
            Arc::new(Float64Array::from(l_val)),
            Arc::new(StringArray::from(l_unit)),
            Arc::new(Date32Array::from(l_date)),
        ];
        lab.write(&RecordBatch::try_new(Arc::clone(&lab_schema), cols)?)?;
        bar.inc((end - start) as u64);
        start = end;
    }
    pat.close()?;
    adm.close()?;
    lab.close()?;
    Ok((opts.patients as u64, n_adm, n_lab))
}

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    // Irwin–Hall approximation: plenty for synthetic lab values.
    (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0
}

/// Generate the whole space; returns total (patients, admissions, labs).
pub fn generate(out: &Path, opts: &GenOptions) -> Result<(u64, u64, u64)> {
    anyhow::ensure!(
        (1..=16).contains(&opts.hospitals),
        "--hospitals must be 1..=16"
    );
    anyhow::ensure!(
        (1..=50_000_000).contains(&opts.patients),
        "--patients must be 1..=50000000"
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((opts.hospitals * opts.patients) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} generating [{bar:40}] {pos}/{len} patients ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results: Vec<Result<(u64, u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.hospitals)
            .map(|h| {
                let bar = bar.clone();
                s.spawn(move || hospital(out, h, opts, &bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked")))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut total = (0, 0, 0);
    for r in results {
        let (p, a, l) = r?;
        total = (total.0 + p, total.1 + a, total.2 + l);
    }
    // The operator's key is the space's trust root: its public half goes
    // into space.toml, the key file stays with the operator.
    let op_path = crate::members::key_path(out, "operator");
    let operator = if op_path.exists() {
        crate::members::load_key(out, "operator", None)?
    } else {
        kexin_engine::identity::new_key_file(&op_path, "operator")?;
        crate::members::load_key(out, "operator", None)?
    };
    std::fs::write(
        out.join("space.toml"),
        space_toml(
            opts.hospitals,
            &hex::encode(operator.verifying_key().as_bytes()),
        ),
    )?;
    // Loopback addresses for a local federation; an edited file is kept.
    let fed = out.join("federation.toml");
    if !fed.exists() {
        std::fs::write(&fed, federation_toml(opts.hospitals, 7401))?;
    }
    let last =
        ((opts.hospitals - 1) as f64 * 0.85 * opts.patients as f64) as u64 + opts.patients as u64;
    let persons: Vec<String> = (0..last.min(MAX_INDIVIDUALS))
        .map(|i| person(opts.seed, i).id_card)
        .collect();
    let space = std::sync::Arc::new(kexin_engine::policy::Space::load(out)?);
    // Each hospital loads its files as its data holder would (`kexin
    // dataset add`): checked, given person ordinals, digested.
    let loaded = std::time::Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = space
            .nodes
            .iter()
            .map(|node| {
                let space = &space;
                s.spawn(move || -> Result<()> {
                    for ds in space.datasets.keys() {
                        kexin_engine::node::data::load(space, node, ds, &[], "operator")?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("loading thread panicked")))
        })
    })?;
    if !opts.quiet {
        println!(
            "loaded {} datasets on {} nodes ({:.1} s)",
            space.datasets.len(),
            space.nodes.len(),
            loaded.elapsed().as_secs_f64()
        );
    }
    let fhe_space = std::sync::Arc::clone(&space);
    // Its own thread and runtime: callers may already be inside one.
    let counts = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::members::example_governance(
                    space, &operator, &persons, opts.seed,
                ))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("governance setup panicked")))
    })?;
    // The FHE-gated scene's key holder (the last hospital) publishes its
    // keys; existing keys are kept.
    let holder = fhe_space
        .scenes
        .values()
        .find_map(|s| s.fhe_gate.as_ref().map(|g| g.key_holder.clone()));
    if let Some(h) = holder
        && opts.fhe_keys
        && !crate::fhe::exists(out, &h)
    {
        let key = crate::members::load_key(out, &format!("node-{h}"), None)?;
        let g = crate::fhe::keygen(&fhe_space, &h, &key)?;
        if !opts.quiet {
            println!(
                "FHE keys of {h} (key holder of joint-diabetes-fhe): server key {} MB, {:.1} s",
                g.server_key_bytes >> 20,
                g.seconds
            );
        }
    }
    if !opts.quiet {
        println!(
            "identities: {} individuals bound to ID numbers; {} granted the consent scenes ({} since revoked, {} expired); {} agreed contracts",
            counts.individuals, counts.grants, counts.revoked, counts.expired, counts.contracts
        );
    }
    Ok(total)
}

/// Individuals the example registry holds at most (the first persons).
const MAX_INDIVIDUALS: u64 = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb11643_known_number() {
        // The standard's worked example: 11010519491231002X.
        assert_eq!(gb11643_check("11010519491231002"), Some('X'));
        assert_eq!(gb11643_check("1101051949123100"), None);
    }

    #[test]
    fn persons_are_deterministic_and_valid() {
        for i in 0..200 {
            let p = person(42, i);
            assert_eq!(p.id_card, person(42, i).id_card);
            assert_eq!(p.id_card.len(), 18);
            assert_eq!(gb11643_check(&p.id_card[..17]), p.id_card.chars().last());
            let sex_digit = p.id_card.as_bytes()[16] - b'0';
            assert_eq!(
                sex_digit % 2 == 1,
                p.sex == "M",
                "sex digit of {}",
                p.id_card
            );
            assert!(REGIONS.iter().any(|r| p.id_card.starts_with(r.0)));
            assert_eq!(p.phone.len(), 11);
        }
        assert_ne!(person(42, 1).id_card, person(43, 1).id_card);
    }
}
