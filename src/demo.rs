//! `kexin demo`: a guided walk through the researcher's query path on a small
//! generated space: allowed, suppressed and refused queries, differential
//! privacy, consent at the scan, the cross-border rule, the airlock, UDFs,
//! then the audit log's verification. Every hospital runs its node server
//! first, and every step is a member's signed request to h1's server, as
//! the commands it prints send them.

use crate::federation::{FromNode, JointStatus, ToNode};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::node::{Outcome, Status};
use kexin_engine::policy::Space;

use crate::{Format, members, render, synth};

/// The node the single-node steps ask.
const NODE: &str = "h1";

/// `who`'s signed request `msg` to h1's node server, and its answer.
fn call(space: &Space, who: &str, msg: &ToNode) -> Result<FromNode> {
    let key = members::load_key(&space.dir, who, None)?;
    crate::federation::ask(
        space,
        NODE,
        &key,
        msg,
        crate::federation::query_wait(space)?,
    )
}

/// A refusal's text, or the answer the request cannot have.
fn refusal(got: FromNode) -> anyhow::Error {
    match got {
        FromNode::Refused { code, rule, .. } => anyhow!("refused {code}: {rule}"),
        other => crate::federation::unexpected(NODE, &other),
    }
}

/// `who`'s signed query under `scene` on h1's server.
fn query(space: &Space, who: &str, scene: &str, sql: &str) -> Result<Outcome> {
    let key = members::load_key(&space.dir, who, None)?;
    let env = members::query(space, NODE, who, &key, scene, None, sql)?;
    match call(space, who, &ToNode::Query(env))? {
        FromNode::Outcome(o) => Ok(*o),
        other => Err(refusal(other)),
    }
}

/// (what it shows, scene, researcher, SQL, expected status)
type Step = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Status,
);

const STEPS: &[Step] = &[
    (
        "Patients by sex and 10-year age band (age is a quasi-identifier, masked to band(10))",
        "diabetes-2027",
        "alice",
        "SELECT sex, age AS age_band, count(*) AS patients FROM patients GROUP BY sex, age ORDER BY sex, age_band",
        Status::Released,
    ),
    (
        "Mean HbA1c of type-2 diabetics by age band: a person-key join plus a cohort subquery",
        "diabetes-2027",
        "alice",
        "SELECT p.age AS age_band, count(DISTINCT p.id_card) AS persons, avg(l.value) AS mean_hba1c \
         FROM patients p JOIN labs l ON p.id_card = l.id_card \
         WHERE l.test = 'hba1c' AND p.id_card IN (SELECT id_card FROM admissions WHERE diagnosis = 'E11') \
         GROUP BY p.age ORDER BY age_band",
        Status::Released,
    ),
    (
        "Stroke admissions by region (prefix(4) of the county code): small cells are suppressed",
        "diabetes-2027",
        "alice",
        "SELECT p.region, count(*) AS admissions, avg(a.cost) AS mean_cost \
         FROM patients p JOIN admissions a ON p.id_card = a.id_card \
         WHERE a.diagnosis = 'I63' GROUP BY p.region ORDER BY p.region",
        Status::Released,
    ),
    (
        "Asking for names and phone numbers (identifiers never leave)",
        "diabetes-2027",
        "alice",
        "SELECT name, phone, count(*) FROM patients GROUP BY name, phone",
        Status::Refused,
    ),
    (
        "Singling out one person by ID number",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM admissions WHERE id_card = '42010219800101001X'",
        Status::Refused,
    ),
    (
        "The largest single cost (MIN/MAX of a sensitive column reveal one person's value)",
        "diabetes-2027",
        "alice",
        "SELECT max(cost) FROM admissions",
        Status::Refused,
    ),
    (
        "A tracker hidden inside a big aggregate",
        "diabetes-2027",
        "alice",
        "SELECT sum(CASE WHEN cost > 190000 THEN cost ELSE 0 END) FROM admissions",
        Status::Refused,
    ),
    (
        "Row-level output without an aggregate",
        "diabetes-2027",
        "alice",
        "SELECT diagnosis, cost FROM admissions",
        Status::Refused,
    ),
    (
        "A researcher querying under another organisation's scene",
        "service-planning",
        "alice",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
        Status::Refused,
    ),
    (
        "An expired scene",
        "flu-2024",
        "alice",
        "SELECT count(*) FROM admissions",
        Status::Refused,
    ),
    (
        "Writing to the data",
        "diabetes-2027",
        "alice",
        "DROP TABLE patients",
        Status::Refused,
    ),
];

/// Queries under the differential-privacy scene.
const DP_STEPS: &[Step] = &[
    (
        "Differential privacy (erin, of a public-health agency answered only under DP): patients and mean weight by sex, each value with its 95% interval; the budget is charged at every node before the query runs",
        "diabetes-dp",
        "erin",
        "SELECT sex, count(*) AS patients, avg(weight_kg) AS mean_weight FROM patients GROUP BY sex",
        Status::Released,
    ),
    (
        "The same question rewritten (aliases, a no-op condition): the same answer again, no budget charged, so averaging buys nothing",
        "diabetes-dp",
        "erin",
        "select SEX, COUNT(1) AS n, AVG(p.weight_kg) AS w from patients p where 1 = 1 group by p.sex",
        Status::Released,
    ),
    (
        "MIN reveals one person's value: DP mode has no mechanism for it",
        "diabetes-dp",
        "erin",
        "SELECT sex, min(weight_kg) FROM patients GROUP BY sex",
        Status::Refused,
    ),
];

/// Consent, review and the cross-border rule.
const GOVERNANCE_STEPS: &[Step] = &[
    (
        "Consent at the scan: the same count under diabetes-consent, where only persons who granted the scene (signed receipts in the registry) contribute",
        "diabetes-consent",
        "alice",
        "SELECT sex, count(*) AS patients FROM patients GROUP BY sex ORDER BY sex",
        Status::Released,
    ),
    (
        "A requester abroad (grace, HK) asks about patients, which is on the export negative list",
        "hk-outcomes",
        "grace",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
        Status::Refused,
    ),
];

/// Queries that call the example WebAssembly UDFs once they are approved.
const UDF_STEPS: &[Step] = &[
    (
        "Mean eGFR (CKD-EPI 2021, a WebAssembly UDF) by 10-year age band: kidney function falls with age",
        "diabetes-2027",
        "alice",
        "SELECT p.age AS age_band, count(DISTINCT p.id_card) AS persons, \
         avg(egfr_ckd_epi_2021(l.value, p.age, p.sex)) AS mean_egfr \
         FROM labs l JOIN patients p ON l.id_card = p.id_card \
         WHERE l.test = 'creatinine' AND p.age >= 20 GROUP BY p.age ORDER BY age_band",
        Status::Released,
    ),
    (
        "Admissions by age band: a UDF with a declared finite domain as the group key",
        "diabetes-2027",
        "alice",
        "SELECT age_band(p.birth_date, DATE '2026-01-01') AS band, count(*) AS admissions, \
         geomean(a.cost) AS geomean_cost \
         FROM admissions a JOIN patients p ON a.id_card = p.id_card GROUP BY band ORDER BY band",
        Status::Released,
    ),
    (
        "A UDF without a declared domain cannot be a group key (it would list values)",
        "diabetes-2027",
        "alice",
        "SELECT hba1c_to_eag(value) AS eag, count(*) FROM labs GROUP BY eag",
        Status::Refused,
    ),
];

/// Where the example modules are: `$KEXIN_UDFS`, else `udfs/target/wasm`.
fn udf_dir() -> PathBuf {
    std::env::var_os("KEXIN_UDFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("udfs/target/wasm"))
}

/// Print a step, run it, print the outcome; false if the decision was not
/// the expected one.
fn show_step(space: &Space, number: usize, step: &Step) -> Result<bool> {
    let (what, scene, actor, sql, expect) = step;
    println!("-- {number}. {what}");
    println!(
        "   kexin query --space {} --scene {scene} --as {actor} \"{sql}\"",
        space.dir.display()
    );
    // Signed with the researcher's key file, as the command line does.
    let o = query(space, actor, scene, sql)?;
    print!("{}", render::outcome(&o, Format::Table)?);
    let as_expected = o.status == *expect;
    if !as_expected {
        println!("   !! expected {expect:?}");
    }
    println!();
    Ok(as_expected)
}

/// A person grants and revokes, and a held result goes through review.
fn consent_and_review(space: &Space, number: usize) -> Result<bool> {
    let d = space.dir.display();
    let sql = "SELECT sum(height_cm) AS total_height FROM patients";
    let ask = |who: &str, scene: &str| query(space, who, scene, sql);
    let total = |o: &Outcome| serde_json::to_string(&o.rows).unwrap_or_default();
    println!(
        "-- {number}. Individual p00000 grants diabetes-consent, then revokes it; the second query after each change sees it"
    );
    let before = ask("alice", "diabetes-consent")?;
    let person = members::load_key(&space.dir, "p00000", None)?;
    let consent = |action, until: Option<&str>| -> Result<()> {
        let receipt = members::receipt(
            space,
            "p00000",
            &person,
            "diabetes-consent",
            action,
            None,
            vec![],
            until.map(str::to_string),
        )?;
        match call(space, "p00000", &ToNode::Consent(receipt))? {
            FromNode::Recorded(_) => Ok(()),
            other => Err(refusal(other)),
        }
    };
    println!(
        "   kexin consent grant --space {d} --as p00000 --scene diabetes-consent --until 2027-12-31"
    );
    consent(kexin_engine::consent::Verb::Grant, Some("2027-12-31"))?;
    let granted = ask("alice", "diabetes-consent")?;
    println!("   kexin consent revoke --space {d} --as p00000 --scene diabetes-consent");
    consent(kexin_engine::consent::Verb::Revoke, None)?;
    let revoked = ask("alice", "diabetes-consent")?;
    println!(
        "   sum(height_cm): {} before, {} with the grant, {} after revoking",
        total(&before),
        total(&granted),
        total(&revoked)
    );
    println!("   kexin consent history --space {d} --as p00000");
    let uses = match call(space, "p00000", &ToNode::History)? {
        FromNode::History(uses) => uses,
        other => return Err(refusal(other)),
    };
    for u in &uses {
        println!(
            "   {} node {} #{}: {} {} by {}",
            u.time, u.node, u.audit_seq, u.decision, u.scene, u.requester
        );
    }
    let consent_ok = granted.rows != before.rows && revoked.rows == before.rows && uses.len() == 1;

    println!(
        "\n-- {}. Airlock: diabetes-review holds results until two data holders of h1 (not the requester) approve",
        number + 1
    );
    println!("   kexin query --space {d} --scene diabetes-review --as alice \"{sql}\"");
    let held = ask("alice", "diabetes-review")?;
    let Some(id) = held.airlock else {
        println!("   !! expected a held result");
        return Ok(false);
    };
    // The reviewers see the held bytes' digest (the requester does not,
    // until release).
    println!("   kexin airlock list --space {d} --node {NODE} --as carol");
    let h = match call(space, "carol", &ToNode::Airlock)? {
        FromNode::Held(all) => all
            .into_iter()
            .find(|h| h.id == id)
            .context("held result")?,
        other => return Err(refusal(other)),
    };
    println!("   held as #{id}, sha256 {}", h.output_sha256);
    use kexin_engine::airlock::Verb;
    let act = |who: &str, action: Verb| -> Result<std::result::Result<_, anyhow::Error>> {
        let key = members::load_key(&space.dir, who, None)?;
        let decision = members::decision(space, NODE, who, &key, id, action, &h.output_sha256)?;
        Ok(match call(space, who, &ToNode::AirlockAct(decision))? {
            FromNode::Decided { held, bytes } => Ok((held, bytes)),
            other => Err(refusal(other)),
        })
    };
    println!("   kexin airlock approve --space {d} --as alice --id {id}");
    let own = act("alice", Verb::Approve)?;
    if let Err(e) = &own {
        println!("   {e}");
    }
    let mut released = None;
    for who in ["carol", "dave"] {
        println!("   kexin airlock approve --space {d} --as {who} --id {id}");
        let (state, bytes) = act(who, Verb::Approve)??;
        println!(
            "   #{id} is {} ({}/{} approvals)",
            state.state,
            state.approvals.len(),
            state.approvers_needed
        );
        released = bytes;
    }
    println!("   kexin airlock show --space {d} --as alice --id {id}");
    let (_, fetched) = act("alice", Verb::Fetch)??;
    if let Some(b) = &fetched {
        println!("   {b}");
    }
    println!();
    Ok(consent_ok && own.is_err() && released.is_some() && fetched == released)
}

/// Three hospitals as node servers (on loopback ports picked now), one
/// federated query exact and one under DP, a two-node attempt, and a PSI.
/// Every hospital runs `kexin node` (on loopback ports written to
/// `federation.toml`): federated queries need them, and so does every DP
/// charge, which each node records before any node computes. Returns the
/// simulated contributors (node servers pin the individuals certified when
/// they start, so they are made first).
fn start_nodes(space: &Arc<Space>, dir: &Path) -> Result<Vec<(String, SigningKey)>> {
    use crate::federation::{self, NodeServer};
    let d = dir.display();
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let mut toml = String::from("round_timeout_seconds = 30\n");
    for (i, l) in listeners.iter().enumerate() {
        toml.push_str(&format!(
            "[node.h{n}]\naddress = \"{}\"\nmember = \"node-h{n}\"\n",
            l.local_addr()?,
            n = i + 1
        ));
    }
    std::fs::write(federation::FedConfig::path(dir), toml)?;
    println!("-- Every hospital runs its node server");
    let people = members::simulated_contributors(space, 1000, "wearable-steps")?;
    for (i, l) in listeners.into_iter().enumerate() {
        let name = format!("h{}", i + 1);
        println!(
            "   kexin node --space {d} --node {name}   # listening on {}",
            l.local_addr()?
        );
        let server = Arc::new(NodeServer::open(Arc::clone(space), &name, None)?);
        std::thread::spawn(move || server.serve(l, || ()));
    }
    println!();
    Ok(people)
}

/// A researcher checks node h1's log through its server, as `kexin audit
/// verify --as alice` does: every leaf, the signed checkpoint's root, and
/// each of her own entries against its leaf. She sees none of the others.
fn researcher_verifies(space: &Space) -> Result<bool> {
    let alice = members::load_key(&space.dir, "alice", None)?;
    let Ok((pages, verifier)) = crate::federation::read_log(space, "h1", &alice)? else {
        println!("== alice could not read h1's log through its server");
        return Ok(false);
    };
    let key = kexin_engine::audit::NoteKey::parse(&verifier)?;
    let origin = kexin_engine::witness::origin(&space.name, "h1");
    match kexin_engine::log_view::check_pages(&origin, &key, &pages, &[]) {
        Ok(r) => {
            println!(
                "== kexin audit verify --as alice (through h1's server): {} entries, root {}; her {} entries checked against their leaves, no one else's shown",
                r.size,
                r.root_hex,
                r.shown.len()
            );
            Ok(r.shown.iter().all(|e| e.actor == "alice"))
        }
        Err(e) => {
            println!("== alice's check of h1's log FAILED: {e}");
            Ok(false)
        }
    }
}

fn federation_step(
    space: &Arc<Space>,
    dir: &Path,
    number: usize,
    people: &[(String, SigningKey)],
) -> Result<bool> {
    use crate::federation;
    let d = dir.display();
    println!("-- {number}. Federation: a researcher asks all three hospitals at once");
    let alice = members::load_key(dir, "alice", None)?;
    let nodes: Vec<String> = ["h1", "h2", "h3"].iter().map(|s| s.to_string()).collect();
    let exact = "SELECT department, COUNT(DISTINCT id_card) AS patients, AVG(cost) AS mean_cost, STDDEV(length_of_stay) AS sd_stay FROM admissions GROUP BY department";
    let noisy = "SELECT department, COUNT(DISTINCT id_card) AS patients, AVG(length_of_stay) AS mean_stay FROM admissions GROUP BY department";
    let erin = members::load_key(dir, "erin", None)?;
    let mut ok = true;
    for (scene, who, key, sql) in [
        ("joint-diabetes", "alice", &alice, exact),
        ("joint-diabetes-dp", "erin", &erin, noisy),
    ] {
        println!(
            "   kexin federate --space {d} --scene {scene} --as {who} --nodes h1,h2,h3 \"{sql}\""
        );
        let out = federation::federate(space, who, key, scene, &nodes, sql)?;
        print!("{}", crate::render::federated(&out, crate::Format::Table)?);
        ok &= out.status == JointStatus::Released && out.rows.len() == 10;
    }
    println!(
        "   kexin federate ... --nodes h1,h2   # two parties: each would learn the other's input"
    );
    let two = federation::federate(space, "alice", &alice, "joint-diabetes", &nodes[..2], exact)?;
    print!("{}", crate::render::federated(&two, crate::Format::Table)?);
    ok &= two.code == Some(kexin_engine::Code::Federation);
    println!(
        "   kexin psi --space {d} --scene joint-diabetes-dp --as erin --nodes h1,h2 --mode sum --column height_cm"
    );
    let psi = federation::psi(
        space,
        "erin",
        &erin,
        "joint-diabetes-dp",
        &nodes[..2],
        kexin_engine::federated::PsiMode::Sum,
        Some("height_cm"),
    )?;
    print!("{}", crate::render::psi(&psi, crate::Format::Table)?);
    ok &= psi.sum.is_some();
    // h1 and h2 share 15% of 2000 patients.
    ok &= psi
        .result
        .as_ref()
        .is_some_and(|r| r.interval[0] - 20.0 <= 300.0 && 300.0 <= r.interval[1] + 20.0);
    println!();
    ok &= fhe_step(space, &alice, &nodes, number + 1)?;
    ok &= contribution_step(space, &alice, people, number + 2)?;
    Ok(ok)
}

/// The FHE-gated joint query: the threshold is applied to encrypted totals.
fn fhe_step(
    space: &Arc<Space>,
    alice: &ed25519_dalek::SigningKey,
    nodes: &[String],
    number: usize,
) -> Result<bool> {
    use crate::federation;
    let d = space.dir.display();
    println!(
        "-- {number}. FHE-gated release: h1 adds the three hospitals' encrypted totals and applies min_persons under TFHE; only h3 (the key holder) decrypts, and only the gated totals"
    );
    println!("   kexin fhe keygen --space {d} --node h3");
    let node_key = members::load_key(&space.dir, "node-h3", None)?;
    let g = crate::fhe::keygen(space, "h3", &node_key)?;
    println!(
        "   h3's compact public key {} KB and server key {} MB published with its signed statement ({:.1} s)",
        g.public_key_bytes >> 10,
        g.server_key_bytes >> 20,
        g.seconds
    );
    let sql = "SELECT sex, COUNT(DISTINCT id_card) AS patients, AVG(height_cm) AS mean_height FROM patients WHERE age >= 90 GROUP BY sex";
    println!(
        "   kexin federate --space {d} --scene joint-diabetes-fhe --as alice --nodes h1,h2,h3 \"{sql}\""
    );
    let t = std::time::Instant::now();
    let out = federation::federate(space, "alice", alice, "joint-diabetes-fhe", nodes, sql)?;
    print!("{}", crate::render::federated(&out, crate::Format::Table)?);
    println!(
        "   ({:.1} s, almost all of it TFHE at h1)\n",
        t.elapsed().as_secs_f64()
    );
    Ok(out.status == JointStatus::Released && !out.rows.is_empty())
}

/// 1,000 simulated individuals contribute a histogram entry each (Prio3);
/// a collection before the batch is full is refused, after it released.
fn contribution_step(
    space: &Arc<Space>,
    alice: &ed25519_dalek::SigningKey,
    people: &[(String, ed25519_dalek::SigningKey)],
    number: usize,
) -> Result<bool> {
    use rayon::prelude::*;
    let d = space.dir.display();
    println!(
        "-- {number}. Individuals contribute: 1,000 wearable users each send their step band as two Prio3 shares (h1, h2) with a validity proof"
    );
    println!(
        "   kexin collect --space {d} --scene wearable-steps --as alice   # before anyone contributed"
    );
    let early = crate::contribute::collect(space, "alice", alice, "wearable-steps")?;
    print!(
        "{}",
        crate::render::collection(&early, crate::Format::Table)?
    );
    let bands = ["<2k", "2k-5k", "5k-8k", "8k-12k", ">=12k"];
    // A skewed but known distribution: person i picks band by i mod 20.
    let band = |i: usize| match i % 20 {
        0..=1 => 0,
        2..=6 => 1,
        7..=13 => 2,
        14..=17 => 3,
        _ => 4,
    };
    println!(
        "   kexin contribute --space {d} --as {} --scene wearable-steps --value \"{}\"   # and 999 more",
        people[0].0,
        bands[band(0)]
    );
    let t = std::time::Instant::now();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build()?;
    let accepted = pool.install(|| {
        people
            .par_iter()
            .enumerate()
            .map(|(i, (name, key))| {
                crate::contribute::contribute(space, name, key, "wearable-steps", bands[band(i)])
                    .map(|o| usize::from(o.status == JointStatus::Accepted))
            })
            .sum::<Result<usize>>()
    })?;
    println!(
        "   {accepted} of {} contributions accepted by both aggregators ({:.1} s; each audited without its value)",
        people.len(),
        t.elapsed().as_secs_f64()
    );
    println!("   kexin collect --space {d} --scene wearable-steps --as alice");
    let out = crate::contribute::collect(space, "alice", alice, "wearable-steps")?;
    print!("{}", crate::render::collection(&out, crate::Format::Table)?);
    let mut expected = [0i64; 5];
    for i in 0..people.len() {
        expected[band(i)] += 1;
    }
    println!();
    Ok(early.code == Some(kexin_engine::Code::Batch)
        && accepted == people.len()
        && out.result.as_ref().is_some_and(|r| r.values == expected))
}

/// A data holder approves the example UDFs on h1, then researchers call
/// them; the number of the last step shown.
fn udf_steps(space: &Space, number: usize, surprises: &mut usize) -> Result<usize> {
    let modules = udf_dir();
    if !modules.join("egfr.wasm").is_file() {
        println!(
            "-- WebAssembly UDF steps skipped: no modules in {} (build them with `bash udfs/build.sh`)\n",
            modules.display()
        );
        return Ok(number);
    }
    println!("-- A data holder approves example WebAssembly UDFs for diabetes-2027");
    let carol = members::load_key(&space.dir, "carol", None)?;
    for m in ["egfr", "age_band", "geomean", "eag"] {
        let path = modules.join(format!("{m}.wasm"));
        println!(
            "   kexin udf register --space {} --scene diabetes-2027 --node {NODE} --as carol {}",
            space.dir.display(),
            path.display()
        );
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let approval =
            members::udf_approval(space, NODE, "carol", &carol, "diabetes-2027", &bytes)?;
        use base64::Engine as _;
        let module = base64::engine::general_purpose::STANDARD.encode(&bytes);
        match call(space, "carol", &ToNode::UdfRegister { approval, module })? {
            FromNode::Registered(r) => {
                println!(
                    "   approved {} ({} function(s))",
                    r.digest,
                    r.functions.len()
                )
            }
            other => return Err(refusal(other)),
        }
    }
    println!();
    for (i, step) in UDF_STEPS.iter().enumerate() {
        if !show_step(space, number + i + 1, step)? {
            *surprises += 1;
        }
    }
    Ok(number + UDF_STEPS.len())
}

pub fn run(keep: Option<PathBuf>) -> Result<u8> {
    let tmp;
    let dir = match keep {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "== kexin demo: generating 3 hospitals x 2000 patients in {}",
        dir.display()
    );
    let (p, a, l) = synth::generate(
        &dir,
        &synth::GenOptions {
            hospitals: 3,
            patients: 2000,
            seed: 2027,
            csv: false,
            quiet: true,
            fhe_keys: false,
        },
    )?;
    println!("   {p} patient records, {a} admissions, {l} lab results; policy in space.toml\n");
    let space = Arc::new(Space::load(&dir)?);
    let people = start_nodes(&space, &dir)?;
    let mut surprises = 0;
    let last = {
        for (i, step) in STEPS.iter().enumerate() {
            if !show_step(&space, i + 1, step)? {
                surprises += 1;
            }
        }
        for (i, step) in DP_STEPS.iter().enumerate() {
            if !show_step(&space, STEPS.len() + i + 1, step)? {
                surprises += 1;
            }
        }
        let mut number = STEPS.len() + DP_STEPS.len();
        for step in GOVERNANCE_STEPS {
            number += 1;
            if !show_step(&space, number, step)? {
                surprises += 1;
            }
        }
        number += 1;
        if !consent_and_review(&space, number)? {
            surprises += 1;
        }
        number += 1;
        udf_steps(&space, number, &mut surprises)?
    };
    if !federation_step(&space, &dir, last + 1, &people)? {
        surprises += 1;
    }
    if !researcher_verifies(&space)? {
        surprises += 1;
    }
    let report = kexin_engine::store::verify(&dir.join("h1"), None)?;
    println!(
        "== kexin audit verify --local: {} entries, {} signed checkpoints, root {}",
        report.entries, report.checkpoints, report.root_hex
    );
    if surprises > 0 {
        anyhow::bail!("{surprises} demo step(s) did not behave as expected");
    }
    println!("== demo complete: every decision above is in the signed audit log of node h1");
    Ok(0)
}
