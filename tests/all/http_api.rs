//! The node's HTTP JSON API against a real `kexin node --http` process:
//! governance for each role with the CLI's rules and shapes, the same query
//! answers and refusal codes as `kexin query`, anyone's checkpoint and
//! proofs, and forged, replayed, misrouted and malformed calls refused (the
//! engine-level ones audited).

use std::io::{Read, Write};
use std::sync::Arc;

use kexin::federation::{ApiAnswer, ApiClient};
use kexin::members;
use kexin_engine::consent::Verb as ConsentVerb;
use kexin_engine::contract::Verb;
use kexin_engine::policy::Space;
use serde_json::Value;

use crate::support::nodes::{BIN, Federation, path};

const SQL: &str = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex";

fn space(f: &Federation) -> Arc<Space> {
    Arc::new(Space::load(&f.dir).expect("space"))
}

/// A client of h1's API at `addr` calling as `who` (unsigned for `None`).
fn client(sp: &Arc<Space>, addr: &str, who: Option<&str>) -> ApiClient {
    let caller = who.map(|w| {
        let key = members::load_key(&sp.dir, w, None).expect("key");
        (w.to_string(), key)
    });
    ApiClient::new(Arc::clone(sp), "h1", addr, caller).expect("client")
}

fn ok(a: ApiAnswer) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

fn refused(a: &ApiAnswer, status: u16, code: &str) {
    assert_eq!(
        (a.status, a.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        a.body
    );
}

/// `kexin query … --format json` through h1's node server.
fn cli_query(f: &Federation, sql: &str) -> Value {
    let out = std::process::Command::new(BIN)
        .args([
            "query",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
            "--scene",
            "diabetes-2027",
            "--as",
            "alice",
            "--format",
            "json",
            sql,
        ])
        .output()
        .expect("run query");
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn governance_and_queries_over_http_answer_as_the_cli() {
    let mut f = Federation::new(3, 10, &[]);
    let api = f.start_api("h1");
    let sp = space(&f);

    // An individual grants consent, lists their receipts and history.
    let person = client(&sp, &api, Some("p00000"));
    let key = members::load_key(&sp.dir, "p00000", None).expect("key");
    let grant = members::receipt(
        &sp,
        "p00000",
        &key,
        "diabetes-consent",
        ConsentVerb::Grant,
        None,
        vec![],
        None,
    )
    .expect("receipt");
    let rec = ok(person.post("/v1/consents", &grant).expect("call"));
    assert_eq!(rec["person"], "p00000");
    let mine = ok(person.get("/v1/consents").expect("call"));
    let mine = mine.as_array().expect("list");
    assert!(!mine.is_empty() && mine.iter().all(|r| r["person"] == "p00000"));
    // Not another person's.
    refused(
        &person.get("/v1/consents?person=p00001").expect("call"),
        403,
        "KX-AUTH",
    );
    ok(person.get("/v1/history").expect("call"));
    // A researcher reads no receipts and no history; a holder reads them.
    let alice = client(&sp, &api, Some("alice"));
    refused(&alice.get("/v1/consents").expect("call"), 403, "KX-AUTH");
    refused(&alice.get("/v1/history").expect("call"), 403, "KX-AUTH");
    let carol = client(&sp, &api, Some("carol"));
    let listed = ok(carol.get("/v1/consents?person=p00000").expect("call"));
    assert_eq!(listed.as_array().map(Vec::len), Some(mine.len()));

    // A query: the same rows as `kexin query`, and a refusal with the
    // same code (before the test's own contract below makes alice's
    // contract for the scene ambiguous).
    let akey = members::load_key(&sp.dir, "alice", None).expect("key");
    let q = members::query(&sp, "h1", "alice", &akey, "diabetes-2027", None, SQL).expect("query");
    let over_http = ok(alice.post("/v1/queries", &q).expect("call"));
    let over_cli = cli_query(&f, SQL);
    assert_eq!(over_http["status"], "released", "{over_http}");
    for k in ["columns", "rows", "suppressed_groups", "explanation"] {
        assert_eq!(over_http[k], over_cli[k], "{k}");
    }
    let bad = "SELECT age FROM patients";
    let q = members::query(&sp, "h1", "alice", &akey, "diabetes-2027", None, bad).expect("query");
    let over_http = ok(alice.post("/v1/queries", &q).expect("call"));
    let over_cli = cli_query(&f, bad);
    assert_eq!(over_http["status"], "refused");
    assert_eq!(over_http["code"], over_cli["code"]);
    assert_eq!(over_http["rule"], over_cli["rule"]);

    // A contract: carol offers, alice agrees, carol finalizes; bob sees
    // nothing of it.
    let ckey = members::load_key(&sp.dir, "carol", None).expect("key");
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &ckey,
        "alice",
        "diabetes-2027",
        members::Offer {
            max_queries: 7,
            ..Default::default()
        },
    )
    .expect("offer");
    let offered = ok(carol.post("/v1/contracts", &terms).expect("call"));
    assert_eq!(offered["state"], "OFFERED");
    let id = offered["id"].as_str().expect("id").to_string();
    let agree = members::contract_action(&sp, "h1", "alice", &akey, &id, Verb::Agree).expect("act");
    assert_eq!(
        ok(alice.post("/v1/contracts/actions", &agree).expect("call"))["state"],
        "AGREED"
    );
    let fin =
        members::contract_action(&sp, "h1", "carol", &ckey, &id, Verb::Finalize).expect("act");
    assert_eq!(
        ok(carol.post("/v1/contracts/actions", &fin).expect("call"))["state"],
        "FINALIZED"
    );
    let bob = client(&sp, &api, Some("bob"));
    let has = |list: Value| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|c| c["id"].as_str() == Some(id.as_str())))
    };
    assert!(!has(ok(bob.get("/v1/contracts").expect("call"))));
    assert!(has(ok(alice.get("/v1/contracts").expect("call"))));
    // Budgets and modules read as on the CLI.
    assert!(ok(alice.get("/v1/budgets").expect("call")).is_array());
    assert!(ok(carol.get("/v1/udfs?scene=diabetes-2027").expect("call")).is_array());
    assert!(ok(carol.get("/v1/airlock").expect("call")).is_array());
}

/// The refused entries of h1's audit log: (seq, actor, kind, code), in
/// order.
fn audited_refusals(f: &Federation) -> Vec<(u64, String, String, String)> {
    let out = std::process::Command::new(BIN)
        .args([
            "audit",
            "list",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
        ])
        .output()
        .expect("audit list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["decision"] == "refused")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (
                e["seq"].as_u64().unwrap_or(0),
                s("actor"),
                s("kind"),
                s("code"),
            )
        })
        .collect()
}

#[test]
fn forged_replayed_misrouted_and_malformed_calls_are_refused() {
    let mut f = Federation::new(3, 10, &[]);
    let api = f.start_api("h1");
    let sp = space(&f);
    let alice = client(&sp, &api, Some("alice"));
    let anon = client(&sp, &api, None);
    let akey = members::load_key(&sp.dir, "alice", None).expect("key");
    let header = |who: &str, node: &str, method: &str, target: &str, body: &[u8]| {
        let key = members::load_key(&sp.dir, who, None).expect("key");
        members::request_header(&sp, node, who, &key, method, target, body).expect("header")
    };

    // Unsigned, signed by someone else's key, for another node, another
    // target or another body: 401 KX-AUTH, and nothing happens.
    refused(&anon.get("/v1/contracts").expect("call"), 401, "KX-AUTH");
    let forged = {
        // alice's key, claiming to be carol.
        let h = members::request_header(&sp, "h1", "carol", &akey, "GET", "/v1/contracts", b"")
            .expect("header");
        anon.call("GET", "/v1/contracts", Some(&h), b"")
            .expect("call")
    };
    refused(&forged, 401, "KX-AUTH");
    let h = header("alice", "h2", "GET", "/v1/contracts", b"");
    refused(
        &anon
            .call("GET", "/v1/contracts", Some(&h), b"")
            .expect("call"),
        401,
        "KX-AUTH",
    );
    let h = header("alice", "h1", "GET", "/v1/airlock", b"");
    refused(
        &anon
            .call("GET", "/v1/contracts", Some(&h), b"")
            .expect("call"),
        401,
        "KX-AUTH",
    );
    let h = header("alice", "h1", "POST", "/v1/queries", b"{}");
    refused(
        &anon
            .call("POST", "/v1/queries", Some(&h), b"{ }")
            .expect("call"),
        401,
        "KX-AUTH",
    );
    refused(
        &anon
            .call("GET", "/v1/contracts", Some("not base64!"), b"")
            .expect("call"),
        401,
        "KX-AUTH",
    );

    // A replayed call: the first is answered, the same header again is not.
    let h = header("alice", "h1", "GET", "/v1/contracts", b"");
    ok(anon
        .call("GET", "/v1/contracts", Some(&h), b"")
        .expect("call"));
    let again = anon
        .call("GET", "/v1/contracts", Some(&h), b"")
        .expect("call");
    refused(&again, 401, "KX-AUTH");
    assert!(
        again.body["rule"]
            .as_str()
            .is_some_and(|r| r.contains("replay")),
        "{}",
        again.body
    );

    // Governance bodies that are forged, replayed or meant for another
    // node, in well-signed calls: refused by the engine, and audited.
    let carol = client(&sp, &api, Some("carol"));
    let ckey = members::load_key(&sp.dir, "carol", None).expect("key");
    let terms = members::offer(
        &sp,
        "h1",
        "carol",
        &ckey,
        "alice",
        "diabetes-2027",
        members::Offer {
            max_queries: 3,
            ..Default::default()
        },
    )
    .expect("offer");
    let id = ok(carol.post("/v1/contracts", &terms).expect("call"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let refused_before = audited_refusals(&f);
    let replayed = carol.post("/v1/contracts", &terms).expect("call");
    refused(&replayed, 403, "KX-AUTH");
    let mut answered = vec![replayed.body["audit_seq"].as_u64()];
    let mut forged =
        members::contract_action(&sp, "h1", "alice", &akey, &id, Verb::Agree).expect("act");
    forged.body.nonce = members::contract_action(&sp, "h1", "alice", &akey, &id, Verb::Agree)
        .expect("act")
        .body
        .nonce;
    let misrouted =
        members::contract_action(&sp, "h2", "alice", &akey, &id, Verb::Agree).expect("act");
    for body in [&forged, &misrouted] {
        let a = alice.post("/v1/contracts/actions", body).expect("call");
        refused(&a, 403, "KX-CONTRACT");
        answered.push(a.body["audit_seq"].as_u64());
    }
    // Each refusal is in the node's audit log, under the claimed actor,
    // and its answer names the entry.
    let new: Vec<(u64, String, String, String)> = audited_refusals(&f)
        .into_iter()
        .skip(refused_before.len())
        .collect();
    assert_eq!(answered, new.iter().map(|e| Some(e.0)).collect::<Vec<_>>());
    let new: Vec<(String, String, String)> = new.into_iter().map(|e| (e.1, e.2, e.3)).collect();
    assert_eq!(
        new,
        [
            ("carol", "contract-offer", "KX-AUTH"),
            ("alice", "contract-agree", "KX-CONTRACT"),
            ("alice", "contract-agree", "KX-CONTRACT"),
        ]
        .map(|(a, k, c)| (a.to_string(), k.to_string(), c.to_string()))
    );
    // The contract is still only offered.
    let listed = ok(carol.get("/v1/contracts").expect("call"));
    let ours = listed
        .as_array()
        .and_then(|l| l.iter().find(|c| c["id"].as_str() == Some(id.as_str())))
        .expect("the offered contract");
    assert_eq!(ours["state"], "OFFERED");
    // A body signed by another member than the caller: refused.
    let agree = members::contract_action(&sp, "h1", "alice", &akey, &id, Verb::Agree).expect("act");
    refused(
        &carol.post("/v1/contracts/actions", &agree).expect("call"),
        403,
        "KX-AUTH",
    );

    // Malformed calls: unknown route, wrong method, a body that does not
    // parse, a body over the limit.
    refused(&alice.get("/v1/nothing").expect("call"), 404, "KX-REQUEST");
    refused(
        &alice
            .call("DELETE", "/v1/contracts", None, b"")
            .expect("call"),
        405,
        "KX-REQUEST",
    );
    refused(
        &alice
            .call("POST", "/v1/contracts/actions", None, b"{\"not\": 1}")
            .expect("call"),
        400,
        "KX-REQUEST",
    );
    // A body announced over the limit is turned away before it is read
    // (a client that sent it all would race the node's close).
    let head = format!(
        "POST /v1/consents HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    refused(
        &alice.raw(head.as_bytes()).expect("call"),
        413,
        "KX-REQUEST",
    );
    refused(
        &alice.get("/v1/budgets?nope=1").expect("call"),
        400,
        "KX-REQUEST",
    );

    // A client pinned to another node's key does not talk to h1.
    let wrong = ApiClient::new(Arc::clone(&sp), "h2", &api, None).expect("client");
    assert!(wrong.get("/v1/node").is_err());

    // A connection that never starts its TLS handshake is closed.
    let mut tcp = std::net::TcpStream::connect(&api).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the node closes an idle connection");
    let _ = tcp.write_all(b"x");
}

#[test]
fn anyone_reads_the_node_checkpoint_and_proofs_without_signing() {
    let mut f = Federation::new(3, 10, &[]);
    let api = f.start_api("h1");
    let sp = space(&f);
    let anon = client(&sp, &api, None);
    let alice = client(&sp, &api, Some("alice"));

    let me = ok(anon.get("/v1/node").expect("call"));
    let (_, key) = kexin::federation::node_identity(&sp.dir, "h1").expect("identity");
    assert_eq!(
        me["public_key"],
        hex::encode(key.verifying_key().to_bytes())
    );
    assert!(
        me["certificate_pem"]
            .as_str()
            .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
    );

    let doc = ok(anon.get("/v1/openapi.json").expect("call"));
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    assert!(doc["paths"]["/v1/consents"]["post"].is_object());

    // A released query, then its proof: the entry to its actor, the leaf
    // hash to anyone; both check against the node's verifier key.
    let akey = members::load_key(&sp.dir, "alice", None).expect("key");
    let q = members::query(&sp, "h1", "alice", &akey, "diabetes-2027", None, SQL).expect("query");
    let out = ok(alice.post("/v1/queries", &q).expect("call"));
    let seq = out["audit_seq"].as_u64().expect("audit_seq");
    let cp = ok(anon.get("/v1/checkpoint").expect("call"));
    assert!(
        cp["note"].as_str().is_some_and(|n| n.starts_with("kexin/")),
        "{cp}"
    );
    let published = std::fs::read_to_string(f.dir.join("h1").join("node.pub")).expect("node.pub");
    assert_eq!(cp["verifier"].as_str(), Some(published.trim()));
    let verifier = kexin_engine::store::read_verifier_key(&f.dir.join("h1")).expect("node.pub");
    let proof_of = |c: &ApiClient| {
        let a = ok(c.get(&format!("/v1/audit/{seq}/proof")).expect("call"));
        serde_json::from_value::<kexin_engine::store::AuditProof>(a["proof"].clone())
            .expect("proof")
    };
    let mine = proof_of(&alice);
    assert!(
        mine.entry
            .as_deref()
            .is_some_and(|e| e.contains("\"alice\""))
    );
    mine.check(&verifier).expect("the proof checks");
    let anyones = proof_of(&anon);
    assert_eq!(anyones.entry, None);
    assert_eq!(anyones.leaf, mine.leaf);
    anyones.check(&verifier).expect("the proof checks");
    // No such entry: a refusal, the same for anyone.
    refused(
        &anon.get("/v1/audit/999999/proof").expect("call"),
        403,
        "KX-AUTH",
    );
}

#[test]
fn a_member_certified_after_start_up_calls_the_api_without_a_restart() {
    let mut f = Federation::new(3, 10, &[]);
    let api = f.start_api("h1");
    let sp = space(&f);
    let keyfile = f.dir.join("dana.key");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("run kexin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let public = run(&["id", "new", "--out", path(&keyfile), "--member", "dana"]);
    let (_, key) = kexin_engine::identity::load_key_file(&keyfile).expect("key file");
    let dana =
        ApiClient::new(Arc::clone(&sp), "h1", &api, Some(("dana".into(), key))).expect("client");
    // Not certified yet.
    refused(&dana.get("/v1/scenes").expect("call"), 401, "KX-AUTH");
    run(&[
        "id",
        "issue",
        "--space",
        path(&f.dir),
        "--member",
        "dana",
        "--role",
        "individual",
        "--public-key",
        &public,
        "--id-number",
        "11010519491231002X",
    ]);
    // Certified: the very next call is answered.
    let scenes = ok(dana.get("/v1/scenes").expect("call"));
    assert!(scenes.as_array().is_some_and(|s| !s.is_empty()));
}

#[test]
fn kill_9_during_http_governance_writes_loses_no_acknowledged_write() {
    let mut f = Federation::new(3, 10, &[]);
    let (mut child, rest, fronts) =
        crate::support::nodes::start_node_with(&f.dir, "h1", None, &["--http", "127.0.0.1:0"]);
    std::thread::spawn(move || rest.count());
    let api = fronts.api.expect("api");
    let sp = space(&f);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four writers offer contracts through the API as fast as it answers;
    // each keeps the ids the node acknowledged (a 200 with the contract).
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (sp, stop, api) = (Arc::clone(&sp), Arc::clone(&stop), api.clone());
            std::thread::spawn(move || {
                crate::support::nodes::offer_until_stopped(&sp, w, &stop, |holder, terms| {
                    match client(&sp, &api, Some(holder)).post("/v1/contracts", &terms) {
                        Ok(a) if a.status == 200 => {
                            Some(a.body["id"].as_str().expect("id").to_string())
                        }
                        Ok(a) => panic!("{} {}", a.status, a.body),
                        Err(_) => None,
                    }
                })
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        !acknowledged.is_empty(),
        "the node acknowledged writes before the kill"
    );
    // Started again, the node holds every contract it acknowledged, and its
    // log verifies.
    let api = f.start_api("h1");
    let held = ok(client(&sp, &api, Some("carol"))
        .get("/v1/contracts")
        .expect("call"));
    let ids: std::collections::BTreeSet<&str> = held
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for id in &acknowledged {
        assert!(ids.contains(id.as_str()), "acknowledged contract {id} lost");
    }
    let out = std::process::Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
        ])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
