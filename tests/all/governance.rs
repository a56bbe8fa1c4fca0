//! The personal data space's rules end to end: signed requests, consent at
//! the scan, contracts, the airlock, the cross-border rule and each person's
//! history. Each test generates its own small space (real files, SQLite,
//! keys), so state changes in one never leak into another.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kexin::members;
use kexin_engine::contract::Verb;
use kexin_engine::gate::Cell;
use kexin_engine::identity::Signed;
use kexin_engine::node::{Node, Outcome, QueryRequest, Status};
use kexin_engine::policy::Space;
use kexin_engine::registry::{Registry, View};
use kexin_engine::{airlock, consent};
use sha2::{Digest, Sha256};

fn space() -> PathBuf {
    support::generated_space(2, 300, 5)
}

fn load(dir: &Path) -> Arc<Space> {
    Arc::new(Space::load(dir).unwrap())
}

fn code(o: &Outcome) -> &'static str {
    o.code.map_or("", |c| c.as_str())
}

fn num(o: &Outcome) -> f64 {
    assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    match &o.rows[0][0] {
        Cell::Int(n) => *n as f64,
        Cell::Float(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

async fn signed(node: &Node, sp: &Space, who: &str, scene: &str, sql: &str) -> Outcome {
    let key = members::load_key(&sp.dir, who, None).unwrap();
    let env = members::query(sp, node.name(), who, &key, scene, None, sql).unwrap();
    node.query_signed(&env).await
}

fn consent(sp: &Arc<Space>, person: &str, scene: &str, action: consent::Verb, until: Option<&str>) {
    let key = members::load_key(&sp.dir, person, None).unwrap();
    let r = members::receipt(
        sp,
        person,
        &key,
        scene,
        action,
        None,
        vec![],
        until.map(str::to_string),
    )
    .unwrap();
    Registry::open(Arc::clone(sp))
        .unwrap()
        .record_consent(r)
        .unwrap();
}

const COUNT: &str = "SELECT count(*) FROM patients";

#[tokio::test]
async fn revocation_between_two_queries_changes_the_second_result() {
    let dir = space();
    let sp = load(&dir);
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    // One person's height moves the sum by 40-230 cm: visible at 2 decimals.
    const SUM: &str = "SELECT sum(height_cm) FROM patients";
    let ask = || signed(&node, &sp, "alice", "diabetes-consent", SUM);
    let before = num(&ask().await);
    // The scene without consent counts everyone: consent really filters.
    let n_consent = num(&signed(&node, &sp, "alice", "diabetes-consent", COUNT).await);
    let n_all = num(&signed(&node, &sp, "alice", "diabetes-2027", COUNT).await);
    assert!(n_consent < n_all, "{n_consent} consenting of {n_all}");

    // p00000 is a patient of h1 and starts without a grant.
    consent(
        &sp,
        "p00000",
        "diabetes-consent",
        consent::Verb::Grant,
        None,
    );
    let granted = ask().await;
    let added = num(&granted) - before;
    assert!(
        (39.9..230.1).contains(&added),
        "one person's height: {added}"
    );
    consent(
        &sp,
        "p00000",
        "diabetes-consent",
        consent::Verb::Revoke,
        None,
    );
    assert_eq!(num(&ask().await), before);

    // Expired consent: a grant that ended long ago counts for nothing.
    consent(
        &sp,
        "p00000",
        "diabetes-consent",
        consent::Verb::Grant,
        Some("2020-01-01"),
    );
    assert_eq!(num(&ask().await), before);

    // History: exactly the one query that ran while the grant was in force.
    let uses = Registry::open(Arc::clone(&sp))
        .unwrap()
        .history("p00000")
        .unwrap();
    let seqs: Vec<u64> = uses.iter().map(|u| u.audit_seq).collect();
    assert_eq!(seqs, vec![granted.audit_seq.unwrap()]);
    assert_eq!(uses[0].requester, "alice");
    assert_eq!(uses[0].purpose, "DS:E11");
    // p00001 never granted: no uses at all.
    let none = Registry::open(Arc::clone(&sp))
        .unwrap()
        .history("p00001")
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn purpose_mismatch_and_missing_registry_fail_closed() {
    let dir = space();
    let sp = load(&dir);
    // A DS:C50 (breast cancer) grant cannot cover a diabetes scene.
    let key = members::load_key(&dir, "p00001", None).unwrap();
    let r = members::receipt(
        &sp,
        "p00001",
        &key,
        "diabetes-consent",
        consent::Verb::Grant,
        Some("DS:C50"),
        vec![],
        None,
    )
    .unwrap();
    let err = Registry::open(Arc::clone(&sp))
        .unwrap()
        .record_consent(r)
        .unwrap_err();
    assert!(err.to_string().contains("does not cover"), "{err}");
    // A receipt signed by p00001 but claiming to be p00002's is refused.
    let mut forged = members::receipt(
        &sp,
        "p00001",
        &key,
        "diabetes-consent",
        consent::Verb::Grant,
        None,
        vec![],
        None,
    )
    .unwrap();
    forged.body.person = "p00002".into();
    assert!(
        Registry::open(Arc::clone(&sp))
            .unwrap()
            .record_consent(forged)
            .is_err()
    );
    let refused = kexin_engine::store::Store::open(&kexin_engine::registry::dir(&dir), "x")
        .unwrap()
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "consent-grant" && e.decision == "refused")
        .count();
    assert_eq!(
        refused, 2,
        "both refused receipts are in the registry's log"
    );

    // Without the registry a consent scene refuses; others still run.
    let node = support::open_h1(&dir).await;
    std::fs::rename(dir.join("registry"), dir.join("registry.away")).unwrap();
    let o = support::ask(&node, "diabetes-consent", "alice", COUNT).await;
    assert_eq!(code(&o), "KX-CONSENT");
    let o = support::ask(&node, "diabetes-2027", "alice", COUNT).await;
    assert_eq!(o.status, Status::Released);
    std::fs::rename(dir.join("registry.away"), dir.join("registry")).unwrap();
}

#[tokio::test]
async fn signed_requests_cannot_be_replayed_or_reused_by_another_researcher() {
    let dir = space();
    let sp = load(&dir);
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    let key = members::load_key(&dir, "alice", None).unwrap();
    let env = members::query(&sp, "h1", "alice", &key, "diabetes-2027", None, COUNT).unwrap();
    assert_eq!(node.query_signed(&env).await.status, Status::Released);
    // The same request again: a replay.
    let again = node.query_signed(&env).await;
    assert_eq!(code(&again), "KX-AUTH");
    assert!(again.rule.unwrap().contains("replay"));
    assert!(again.audit_seq.is_some(), "refusals are audited");

    // Bob takes alice's signed request and puts his name on it.
    let mut stolen =
        members::query(&sp, "h1", "alice", &key, "diabetes-2027", None, COUNT).unwrap();
    stolen.body.member = "bob".into();
    assert_eq!(code(&node.query_signed(&stolen).await), "KX-AUTH");
    // ... or moves it to another scene or node.
    let mut moved = members::query(&sp, "h1", "alice", &key, "diabetes-2027", None, COUNT).unwrap();
    moved.body.scene = "diabetes-consent".into();
    assert_eq!(code(&node.query_signed(&moved).await), "KX-AUTH");
    let other = members::query(&sp, "h2", "alice", &key, "diabetes-2027", None, COUNT).unwrap();
    assert_eq!(code(&node.query_signed(&other).await), "KX-AUTH");
    // Bob signing with his own key gets nothing under alice's scene.
    let o = signed(&node, &sp, "bob", "diabetes-2027", COUNT).await;
    assert_eq!(code(&o), "KX-SCENE");
    // A stale request (signed long ago) is refused even with a fresh nonce.
    let mut stale = members::query(&sp, "h1", "alice", &key, "diabetes-2027", None, COUNT).unwrap();
    stale.body.time = "2026-01-01T00:00:00Z".into();
    let stale = Signed::sign(kexin_engine::identity::tag::QUERY, stale.body, &key).unwrap();
    assert_eq!(code(&node.query_signed(&stale).await), "KX-AUTH");
    // An individual cannot submit queries even with a valid signature.
    let o = signed(&node, &sp, "p00000", "diabetes-2027", COUNT).await;
    assert_eq!(code(&o), "KX-AUTH");
}

async fn bob_asks(node: &Node, contract: Option<String>) -> Outcome {
    let req = QueryRequest {
        contract,
        ..QueryRequest::new(
            "service-planning",
            "bob",
            "SELECT sex, count(*) FROM patients GROUP BY sex",
        )
    };
    node.query(&req).await
}

#[tokio::test]
async fn contracts_gate_every_query() {
    let dir = space();
    let sp = load(&dir);
    // h1 with h2 as its in-process peer: DP charges reach every node.
    let node = support::open_with_peers(&dir, "h1").await;
    let carol = members::load_key(&dir, "carol", None).unwrap();
    let alice = members::load_key(&dir, "alice", None).unwrap();
    let ask = |contract: Option<String>| bob_asks(&node, contract);
    // bob has the generated contract for service-planning.
    let c = node
        .contracts()
        .unwrap()
        .into_iter()
        .find(|c| c.terms.requester == "bob" && c.terms.scene == "service-planning")
        .unwrap();
    assert_eq!(ask(None).await.status, Status::Released);

    // Terminated by the holder: refused from then on.
    let bob = members::load_key(&dir, "bob", None).unwrap();
    node.contract_act(
        &members::contract_action(&sp, "h1", "carol", &carol, &c.id, Verb::Terminate).unwrap(),
    )
    .unwrap();
    assert_eq!(code(&ask(None).await), "KX-CONTRACT");

    // A new offer is not usable until bob agrees; then exactly 2 queries.
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &carol,
        "bob",
        "service-planning",
        members::Offer {
            max_queries: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let offered = node.contract_offer(&terms).unwrap();
    assert_eq!(code(&ask(Some(offered.id.clone())).await), "KX-CONTRACT");
    // alice cannot agree to bob's contract.
    assert!(
        node.contract_act(
            &members::contract_action(&sp, "h1", "alice", &alice, &offered.id, Verb::Agree)
                .unwrap()
        )
        .is_err()
    );
    // An action no one knows cannot be read at all, so the caller's text
    // never reaches the node or its log.
    let mut raw = serde_json::to_value(
        members::contract_action(&sp, "h1", "bob", &bob, &offered.id, Verb::Agree).unwrap(),
    )
    .unwrap();
    raw["body"]["action"] = "agree\nforged".into();
    assert!(serde_json::from_value::<Signed<kexin_engine::contract::Action>>(raw).is_err());
    node.contract_act(
        &members::contract_action(&sp, "h1", "bob", &bob, &offered.id, Verb::Agree).unwrap(),
    )
    .unwrap();
    assert_eq!(ask(None).await.status, Status::Released);
    assert_eq!(ask(Some(offered.id.clone())).await.status, Status::Released);
    let exhausted = ask(None).await;
    assert_eq!(code(&exhausted), "KX-CONTRACT");
    assert!(exhausted.rule.unwrap().contains("used up"));

    // An expired contract refuses.
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &carol,
        "bob",
        "service-planning",
        members::Offer {
            max_queries: 10,
            valid_to: Some("2026-01-31".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let old = node.contract_offer(&terms).unwrap();
    node.contract_act(
        &members::contract_action(&sp, "h1", "bob", &bob, &old.id, Verb::Agree).unwrap(),
    )
    .unwrap();
    let o = ask(Some(old.id.clone())).await;
    assert_eq!(code(&o), "KX-CONTRACT");
    assert!(o.rule.unwrap().contains("expired"));

    // A contract can narrow the datasets: patients only, admissions unknown.
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &carol,
        "bob",
        "service-planning",
        members::Offer {
            datasets: Some(vec!["patients".into()]),
            max_queries: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let narrow = node.contract_offer(&terms).unwrap();
    node.contract_act(
        &members::contract_action(&sp, "h1", "bob", &bob, &narrow.id, Verb::Agree).unwrap(),
    )
    .unwrap();
    let o = node
        .query(&QueryRequest {
            contract: Some(narrow.id.clone()),
            ..QueryRequest::new(
                "service-planning",
                "bob",
                "SELECT department, count(*) FROM admissions GROUP BY department",
            )
        })
        .await;
    assert_eq!(code(&o), "KX-SQL-UNKNOWN");

    // A contract's ε cap lowers the researcher's DP budget under the scene.
    let erin_key = members::load_key(&dir, "erin", None).unwrap();
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &carol,
        "erin",
        "diabetes-dp",
        members::Offer {
            max_queries: 100,
            epsilon: Some(0.2),
            ..Default::default()
        },
    )
    .unwrap();
    let capped = node.contract_offer(&terms).unwrap();
    node.contract_act(
        &members::contract_action(&sp, "h1", "erin", &erin_key, &capped.id, Verb::Agree).unwrap(),
    )
    .unwrap();
    let mut codes = Vec::new();
    for i in 0..3 {
        let req = QueryRequest {
            contract: Some(capped.id.clone()),
            ..QueryRequest::new(
                "diabetes-dp",
                "erin",
                &format!("SELECT sex, count(*) FROM patients WHERE age > {i} GROUP BY sex"),
            )
        };
        codes.push(code(&node.query(&req).await));
    }
    assert_eq!(codes, ["", "", "KX-DP-BUDGET"]);

    // Every state change is in the audit log.
    let kinds: Vec<String> = kexin_engine::store::Store::open(node.dir(), "x")
        .unwrap()
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.starts_with("contract-"))
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "contract-terminate"));
    assert!(!kinds.iter().any(|k| k.contains("forged")));
    assert!(kinds.iter().filter(|k| *k == "contract-agree").count() >= 3);
}

#[tokio::test]
async fn the_airlock_releases_only_what_holders_approved() {
    let dir = space();
    let sp = load(&dir);
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    let held = signed(
        &node,
        &sp,
        "alice",
        "diabetes-review",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(held.status, Status::Held);
    assert!(held.rows.is_empty(), "nothing leaves while held");
    let id = held.airlock.unwrap();
    let h = node
        .airlock()
        .unwrap()
        .into_iter()
        .find(|h| h.id == id)
        .unwrap();
    let act = |who: &str, action: airlock::Verb, digest: &str| {
        let key = members::load_key(&dir, who, None).unwrap();
        node.airlock_act(&members::decision(&sp, "h1", who, &key, id, action, digest).unwrap())
    };
    // The requester can neither approve nor see it yet.
    assert!(act("alice", airlock::Verb::Approve, &h.output_sha256).is_err());
    assert!(act("alice", airlock::Verb::Fetch, &h.output_sha256).is_err());
    // An approval must name the held bytes' digest.
    assert!(act("carol", airlock::Verb::Approve, &"0".repeat(64)).is_err());
    // Holders of another node cannot review h1's results.
    assert!(act("holder-h2", airlock::Verb::Approve, &h.output_sha256).is_err());
    // Two approvers: carol, then (not carol again) dave.
    let (after1, shown) = act("carol", airlock::Verb::Approve, &h.output_sha256).unwrap();
    assert_eq!((after1.state.as_str(), shown), ("held", None));
    assert!(act("carol", airlock::Verb::Approve, &h.output_sha256).is_err());
    let (after2, shown) = act("dave", airlock::Verb::Approve, &h.output_sha256).unwrap();
    assert_eq!(after2.state, airlock::State::Released);
    let bytes = shown.unwrap();
    // The released bytes are the reviewed bytes.
    assert_eq!(
        hex::encode(Sha256::digest(bytes.as_bytes())),
        h.output_sha256
    );
    let (_, fetched) = act("alice", airlock::Verb::Fetch, &h.output_sha256).unwrap();
    assert_eq!(fetched.unwrap(), bytes);
    let v: serde_json::Value = serde_json::from_str(&bytes).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    // The audit log holds both ends with the same digest.
    let entries = kexin_engine::store::Store::open(node.dir(), "x")
        .unwrap()
        .entries()
        .unwrap();
    let with = |kind: &str| {
        entries
            .iter()
            .find(|e| e.kind == kind && e.output_sha256.as_deref() == Some(&h.output_sha256))
            .is_some()
    };
    assert!(with("query") && with("airlock-release"));
    // The requester's attempt to approve their own result is audited too.
    assert!(entries.iter().any(|e| e.kind == "airlock-approve"
        && e.actor == "alice"
        && e.decision == "refused"
        && e.code.as_deref() == Some("KX-REVIEW")));
    // So is her early fetch, under the fetch's own kind.
    assert!(
        entries
            .iter()
            .any(|e| e.kind == "airlock-fetch" && e.actor == "alice" && e.decision == "refused")
    );

    // A rejected result is never released.
    let held = signed(&node, &sp, "alice", "diabetes-review", COUNT).await;
    let id2 = held.airlock.unwrap();
    let h2 = node
        .airlock()
        .unwrap()
        .into_iter()
        .find(|h| h.id == id2)
        .unwrap();
    let key = members::load_key(&dir, "dave", None).unwrap();
    node.airlock_act(
        &members::decision(
            &sp,
            "h1",
            "dave",
            &key,
            id2,
            airlock::Verb::Reject,
            &h2.output_sha256,
        )
        .unwrap(),
    )
    .unwrap();
    let alice = members::load_key(&dir, "alice", None).unwrap();
    assert!(
        node.airlock_act(
            &members::decision(
                &sp,
                "h1",
                "alice",
                &alice,
                id2,
                airlock::Verb::Fetch,
                &h2.output_sha256
            )
            .unwrap()
        )
        .is_err()
    );
    let carol = members::load_key(&dir, "carol", None).unwrap();
    assert!(
        node.airlock_act(
            &members::decision(
                &sp,
                "h1",
                "carol",
                &carol,
                id2,
                airlock::Verb::Approve,
                &h2.output_sha256
            )
            .unwrap()
        )
        .is_err()
    );
}

#[tokio::test]
async fn cross_border_requesters_get_nothing_from_the_negative_list() {
    let dir = space();
    let sp = load(&dir);
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    let o = signed(
        &node,
        &sp,
        "grace",
        "hk-outcomes",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(code(&o), "KX-CROSS-BORDER");
    assert!(o.audit_seq.is_some());
    // Through a join too.
    let o = signed(
        &node,
        &sp,
        "grace",
        "hk-outcomes",
        "SELECT a.department, count(*) FROM admissions a JOIN patients p ON a.id_card = p.id_card GROUP BY a.department",
    )
    .await;
    assert_eq!(code(&o), "KX-CROSS-BORDER");
    let o = signed(
        &node,
        &sp,
        "grace",
        "hk-outcomes",
        "SELECT department, count(*) FROM admissions GROUP BY department",
    )
    .await;
    assert_eq!(o.status, Status::Released, "{:?}", o.rule);
}

#[test]
fn certificates_verify_offline_and_bind_id_numbers_once() {
    let dir = space();
    let sp = load(&dir);
    let view = View::open(&sp).unwrap();
    let (_, cert) = view.member_key("p00000").unwrap();
    assert_eq!(cert.body.role, kexin_engine::identity::Role::Individual);
    assert!(cert.body.real_name_verified);
    let digest = cert.body.id_digest.clone().unwrap();
    assert_eq!(digest.len(), 64, "a digest, never the number");
    let op = sp.operator_key.unwrap();
    assert!(cert.check(&sp.name, &op, "2027-01-01").is_ok());
    assert!(cert.check(&sp.name, &op, "2031-01-01").is_err(), "expired");
    let mut edited = cert.clone();
    edited.body.role = kexin_engine::identity::Role::Researcher;
    assert!(edited.check(&sp.name, &op, "2027-01-01").is_err());
    // The same ID number cannot be bound to a second member.
    let mut registry = Registry::open(Arc::clone(&sp)).unwrap();
    let operator = members::load_key(&dir, "operator", None).unwrap();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut again = cert.body.clone();
    again.member = "impostor".into();
    again.public_key = hex::encode(stranger.verifying_key().as_bytes());
    let again = Signed::sign(kexin_engine::identity::tag::CERTIFICATE, again, &operator).unwrap();
    assert!(registry.issue(again).is_err());
    // A certificate not signed by the operator is refused.
    let mut self_signed = cert.body.clone();
    self_signed.member = "mallory".into();
    self_signed.id_digest = None;
    let self_signed = Signed::sign(
        kexin_engine::identity::tag::CERTIFICATE,
        self_signed,
        &stranger,
    )
    .unwrap();
    assert!(registry.issue(self_signed).is_err());
}
