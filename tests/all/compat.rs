//! Old evidence stays evidence. `tests/fixtures/audit-v1/` is a node's
//! audit log (state database, head file, verifier key) written by kexin
//! before the closed sets of audit entries became types (main at 5ed3ad1's
//! audit code). It holds an entry of every kind and decision the code
//! wrote then, and entries with every optional field set. Whatever the
//! types become, that log must verify, and every entry must parse and
//! serialize to the bytes that were signed.
//!
//! The fixture was made by [`write_the_audit_fixture`] (ignored: run it
//! only to pin a new format version, into a new folder).

use std::path::{Path, PathBuf};

use kexin_engine::airlock::Verb;
use kexin_engine::audit::{AuditEntry, Decision, Kind};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::store::{NodeKeys, Store, verify};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v1")
}

/// (kind, decision) of every entry the code wrote at the time, governance
/// refusals included. A refused contract or airlock action was audited
/// under `contract-<action>` / `airlock-<action>` with the action as the
/// caller sent it (`launch`, `publish` here), so old logs hold kinds
/// outside any list: reading must keep accepting them.
const WRITTEN: &[(&str, &str)] = &[
    ("query", "released"),
    ("query", "refused"),
    ("query", "held"),
    ("federated", "released"),
    ("federated", "refused"),
    ("federated", "aborted"),
    ("psi", "released"),
    ("psi", "refused"),
    ("psi", "aborted"),
    ("collection", "released"),
    ("collection", "refused"),
    ("collection", "aborted"),
    ("contribution", "accepted"),
    ("contribution", "refused"),
    ("budget-charge", "released"),
    ("udf-register", "approved"),
    ("udf-register", "refused"),
    ("contract-offer", "offered"),
    ("contract-offer", "refused"),
    ("contract-agree", "agreed"),
    ("contract-agree", "refused"),
    ("contract-finalize", "finalized"),
    ("contract-terminate", "terminated"),
    ("contract-launch", "refused"),
    ("airlock-approve", "approved"),
    ("airlock-approve", "refused"),
    ("airlock-reject", "rejected"),
    ("airlock-release", "released"),
    ("airlock-publish", "refused"),
    ("consent-grant", "recorded"),
    ("consent-revoke", "recorded"),
    ("consent-grant", "refused"),
    ("identity-issue", "issued"),
    ("identity-issue", "refused"),
];

/// Writes `tests/fixtures/audit-v1` (or `$KEXIN_AUDIT_FIXTURE`) afresh.
#[test]
#[ignore = "writes the fixture; run once per pinned format version"]
fn write_the_audit_fixture() {
    let dir = std::env::var_os("KEXIN_AUDIT_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(fixture);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let origin = "kexin/fixture/h1";
    let keys = NodeKeys::load_or_create(&dir, origin).unwrap();
    let mut store = Store::open(&dir, origin).unwrap();
    let digest = [7u8; 32];
    for (i, (kind, decision)) in WRITTEN.iter().enumerate() {
        let mut e = AuditEntry::new(
            "h1",
            "alice",
            "diabetes-2027",
            Kind::Query,
            Decision::Released,
            &digest,
        );
        // The strings as the code of the time wrote them.
        e.kind = kind.to_string();
        e.decision = decision.to_string();
        if *decision == "refused" || *decision == "aborted" {
            e.code = Some("KX-CONTRACT".into());
            e.rule = Some("this member may not take this action on the contract".into());
        }
        // Every optional field, on a few entries.
        if i % 5 == 0 {
            e.sql_sha256 = Some(hex(1));
            e.plan_sha256 = Some(hex(2));
            e.output_sha256 = Some(hex(3));
            e.rows_released = 4;
            e.suppressed_groups = 2;
            e.udfs = vec![format!("age_band@{}", hex(4))];
            e.epsilon = Some(0.25);
            e.repeat_of = Some(1);
            e.contract = Some("c-0001".into());
            e.consent_seq = Some(42);
            e.consent_sha256 = Some(hex(5));
            e.session = Some(hex(6));
            e.charged_by = Some("h2".into());
        }
        store.append(e, &keys).unwrap();
    }
    drop(store);
    // The verifier needs the public key only.
    std::fs::remove_file(dir.join("node.key")).unwrap();
}

fn hex(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

#[test]
fn an_audit_log_written_before_the_typed_sets_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["kexin.db", "audit.head", "node.pub"] {
        std::fs::copy(fixture().join(f), tmp.path().join(f)).unwrap();
    }
    let report = verify(tmp.path(), None).expect("the old log verifies");
    assert_eq!(report.entries, WRITTEN.len() as u64);
    // Every entry parses and serializes to the signed bytes.
    let db = rusqlite::Connection::open(tmp.path().join("kexin.db")).unwrap();
    let mut stmt = db.prepare("SELECT entry FROM audit ORDER BY seq").unwrap();
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| Ok(r.get_ref(0)?.as_bytes()?.to_vec()))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), WRITTEN.len());
    for (bytes, (kind, decision)) in rows.iter().zip(WRITTEN) {
        let e: AuditEntry = serde_json::from_slice(bytes).unwrap();
        assert_eq!(&serde_json::to_vec(&e).unwrap(), bytes);
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(v["kind"], *kind);
        assert_eq!(v["decision"], *decision);
    }
    // The typed sets write what the old code wrote: every kind and decision
    // is in the old log, except the kinds that now stand for an action no
    // one knows (the old code wrote the caller's text there).
    let mut old_kinds: Vec<&str> = WRITTEN.iter().map(|(k, _)| *k).collect();
    // Written by the old code (`airlock-<action>` of a refused fetch) but
    // not held by the fixture.
    old_kinds.push("airlock-fetch");
    let old_decisions: Vec<&str> = WRITTEN.iter().map(|(_, d)| *d).collect();
    // Kinds added after the fixture was written: new strings, not renamed
    // old ones.
    const ADDED_SINCE: &[&str] = &[
        "udf-submit",
        "dataset-load",
        "person-bind",
        "dispute-open",
        "dispute-resolve",
    ];
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(*k));
        assert!(
            old_kinds.contains(&k.as_str()) || ADDED_SINCE.contains(&k.as_str()),
            "{k} is new"
        );
    }
    for k in ADDED_SINCE {
        assert!(!old_kinds.contains(k), "{k} was in the old log");
    }
    // Decisions added after the fixture was written (disputes).
    const DECIDED_SINCE: &[&str] = &["opened", "upheld", "dismissed", "withdrawn"];
    for d in Decision::ALL {
        assert_eq!(Decision::parse(d.as_str()), Some(*d));
        assert!(
            old_decisions.contains(&d.as_str()) || DECIDED_SINCE.contains(&d.as_str()),
            "{d} is new"
        );
    }
    for d in DECIDED_SINCE {
        assert!(!old_decisions.contains(d), "{d} was in the old log");
    }
    assert_eq!(Verb::Fetch.audit_kind().as_str(), "airlock-fetch");
    // One edited byte fails, so the check above is not vacuous.
    db.execute(
        "UPDATE audit SET entry = replace(entry, 'alice', 'alicf') WHERE seq = 3",
        [],
    )
    .unwrap();
    drop(stmt);
    drop(db);
    assert!(verify(tmp.path(), None).is_err());
}

/// The signed governance bodies as the previous code declared them: the
/// closed sets were `String` fields then.
mod before {
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Action {
        pub space: String,
        pub node: String,
        pub contract: String,
        pub action: String,
        pub member: String,
        pub nonce: String,
        pub time: String,
    }

    #[derive(Serialize)]
    pub struct Decision {
        pub space: String,
        pub node: String,
        pub id: u64,
        pub action: String,
        pub member: String,
        pub output_sha256: String,
        pub nonce: String,
        pub time: String,
    }

    #[derive(Serialize)]
    pub struct ConsentReceipt {
        pub space: String,
        pub person: String,
        pub scene: String,
        pub action: String,
        pub purpose: String,
        pub modifiers: Vec<String>,
        pub requester: String,
        pub until: Option<String>,
        pub nonce: String,
        pub time: String,
    }

    #[derive(Serialize)]
    pub struct Terms {
        pub space: String,
        pub node: String,
        pub holder: String,
        pub requester: String,
        pub scene: String,
        pub datasets: Vec<String>,
        pub release: String,
        pub max_queries: u64,
        pub epsilon: Option<f64>,
        pub valid_to: String,
        pub nonce: String,
        pub time: String,
    }
}

/// Sign `old` as the previous code did, read the envelope as today's type
/// `T`, and check that its signature still verifies and that it writes the
/// same bytes.
fn still_verifies<T>(tag: &str, old: impl serde::Serialize)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let body = serde_json::to_vec(&old).unwrap();
    let mut msg = tag.as_bytes().to_vec();
    msg.push(0);
    msg.extend(&body);
    use ed25519_dalek::Signer;
    let signature = hex::encode(key.sign(&msg).to_bytes());
    let text = format!(
        "{{\"body\":{},\"signature\":\"{signature}\"}}",
        String::from_utf8(body.clone()).unwrap()
    );
    let env: Signed<T> = Signed::from_json(&text, kexin_engine::Code::Auth).unwrap();
    env.verify(tag, &key.verifying_key(), kexin_engine::Code::Auth)
        .unwrap();
    assert_eq!(serde_json::to_vec(&env.body).unwrap(), body);
}

#[test]
fn governance_bodies_signed_before_the_typed_sets_still_verify() {
    let s = |x: &str| x.to_string();
    for action in ["agree", "finalize", "terminate"] {
        still_verifies::<kexin_engine::contract::Action>(
            tag::CONTRACT,
            before::Action {
                space: s("hubei"),
                node: s("h1"),
                contract: s("ct-0123456789abcdef"),
                action: s(action),
                member: s("bob"),
                nonce: s("n1"),
                time: s("2026-11-30T10:00:00Z"),
            },
        );
    }
    for action in ["approve", "reject", "fetch"] {
        still_verifies::<kexin_engine::airlock::Decision>(
            tag::REVIEW,
            before::Decision {
                space: s("hubei"),
                node: s("h1"),
                id: 3,
                action: s(action),
                member: s("carol"),
                output_sha256: "ab".repeat(32),
                nonce: s("n2"),
                time: s("2026-11-30T10:00:00Z"),
            },
        );
    }
    for action in ["grant", "revoke"] {
        still_verifies::<kexin_engine::consent::ConsentReceipt>(
            tag::CONSENT,
            before::ConsentReceipt {
                space: s("hubei"),
                person: s("p00001"),
                scene: s("diabetes-consent"),
                action: s(action),
                purpose: s("DS:E11"),
                modifiers: vec![s("NPU")],
                requester: s("alice"),
                until: Some(s("2027-12-31")),
                nonce: s("n3"),
                time: s("2026-11-30T10:00:00Z"),
            },
        );
    }
    for release in ["auto", "review"] {
        still_verifies::<kexin_engine::contract::Terms>(
            tag::CONTRACT,
            before::Terms {
                space: s("hubei"),
                node: s("h1"),
                holder: s("carol"),
                requester: s("bob"),
                scene: s("diabetes-2027"),
                datasets: vec![s("patients")],
                release: s(release),
                max_queries: 5,
                epsilon: Some(0.5),
                valid_to: s("2027-12-31"),
                nonce: s("n4"),
                time: s("2026-11-30T10:00:00Z"),
            },
        );
    }
    // A value outside a set is refused when the envelope is read, so it
    // never reaches a node's rules or its log.
    let text = r#"{"body":{"space":"hubei","node":"h1","contract":"ct-1","action":"launch","member":"bob","nonce":"n","time":"t"},"signature":"00"}"#;
    assert!(
        Signed::<kexin_engine::contract::Action>::from_json(text, kexin_engine::Code::Auth)
            .is_err()
    );
}
