//! `kexin audit`: verify a node's log (through its server, or its folder
//! with `--local`; against checkpoints kept elsewhere and its witnesses),
//! show it to the witnesses now, list its entries, and prove one entry's
//! inclusion through the node's server.

use std::sync::Arc;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kexin::Format;
use std::path::PathBuf;

use kexin_engine::audit::NoteKey;
use kexin_engine::evidence::{Binds, Bundle, Cosignature};
use kexin_engine::log_view::{LogReport, check_pages};
use kexin_engine::node::Node;
use kexin_engine::policy::Space;
use kexin_engine::witness::origin;

use crate::cli::target::MEMBER_NEEDED;
use crate::{AuditAction, node_name, runtime};

pub(crate) fn audit(action: AuditAction) -> Result<u8> {
    match action {
        AuditAction::Verify {
            space,
            node,
            checkpoint,
            keep,
            witnesses,
            actor,
            key,
            local,
        } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
            let mut external = Vec::new();
            if let Some(p) = checkpoint {
                let note = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                external.push(("external checkpoint".to_string(), note));
            }
            if !local {
                let member = actor.context(MEMBER_NEEDED)?;
                let me = kexin::members::load_key(&space.dir, &member, key.as_deref())?;
                if let Some(note) = keep
                    .as_deref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                {
                    external.push(("the checkpoint kept from the last check".to_string(), note));
                }
                if witnesses {
                    let cfg = kexin::federation::FedConfig::load(&space.dir)?;
                    external.extend(kexin::witness::held(&space, &cfg, &me, &node)?);
                }
                let report = match remote_log(&space, &node, &me, &external)? {
                    Remote::Checked(r) => r,
                    Remote::Refused(code) => return Ok(code),
                    Remote::Failed => return Ok(5),
                };
                if let Some(p) = &keep {
                    write_note(p, &report.checkpoint)?;
                }
                println!(
                    "audit log of node {node} verified through its server: {} entries, root {}; {} entr{} shown to {member} checked against {}{}",
                    report.size,
                    report.root_hex,
                    report.shown.len(),
                    if report.shown.len() == 1 { "y" } else { "ies" },
                    if report.shown.len() == 1 {
                        "its leaf"
                    } else {
                        "their leaves"
                    },
                    consistent(external.len())
                );
                return Ok(0);
            }
            if witnesses {
                let cfg = kexin::federation::FedConfig::load(&space.dir)?;
                let member = match actor {
                    Some(a) => a,
                    None => cfg
                        .node
                        .get(&node)
                        .map(|a| a.member.clone())
                        .context("no identity for the node in federation.toml; pass --as")?,
                };
                let me = kexin::members::load_key(&space.dir, &member, key.as_deref())?;
                external.extend(kexin::witness::held(&space, &cfg, &me, &node)?);
            }
            match kexin_engine::store::verify_with(&space.dir.join(&node), &external) {
                Ok(r) => {
                    println!(
                        "audit log of node {node} verified: {} entries, {} signed checkpoints, root {}{}",
                        r.entries,
                        r.checkpoints,
                        r.root_hex,
                        consistent(external.len())
                    );
                    Ok(0)
                }
                Err(e) => {
                    println!("audit log of node {node} FAILED verification: {e}");
                    Ok(5)
                }
            }
        }
        AuditAction::Witness {
            space,
            node,
            format,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let node = node_name(&space, node);
            let (cfg, me) = kexin::federation::node_identity(&space.dir, &node)?;
            let rt = runtime()?;
            let n = rt.block_on(Node::open(Arc::clone(&space), &node))?;
            let Some(answers) = kexin::witness::submit(&space, &cfg, &me, &n)? else {
                println!("node {node} has no checkpoint yet");
                return Ok(0);
            };
            let mut all = true;
            for a in &answers {
                all &= a.cosigned.is_some();
                if format == Format::Json {
                    println!("{}", serde_json::to_string(a)?);
                } else {
                    match &a.refused {
                        None => println!("{}: witnessed and countersigned", a.witness),
                        Some(why) => println!("{}: not witnessed ({why})", a.witness),
                    }
                }
            }
            Ok(if all { 0 } else { 1 })
        }
        AuditAction::Prove {
            space,
            node,
            actor,
            key,
            seq,
            format,
            out,
            local,
        } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
            if local {
                return prove_local(space, &node, &actor, seq, out, format);
            }
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            // For a bundle: the other nodes' countersignatures first, and
            // the proof under the checkpoint most of them hold.
            let (cosigned, size) = match &out {
                Some(_) => {
                    let cfg = kexin::federation::FedConfig::load(&space.dir)?;
                    let got = kexin::witness::cosignatures(&space, &cfg, &signing, &node);
                    let size = common_size(&got, seq);
                    (got, size)
                }
                None => (vec![], None),
            };
            let wait = kexin::federation::query_wait(&space)?;
            let msg = kexin::federation::ToNode::Prove { seq, size };
            let (proof, verifier, vouch) =
                match kexin::federation::ask(&space, &node, &signing, &msg, wait)? {
                    kexin::federation::FromNode::Proof {
                        proof,
                        verifier,
                        vouch,
                    } => (*proof, verifier, vouch),
                    kexin::federation::FromNode::Refused { code, rule, .. } => {
                        println!("refused {code}: {rule}");
                        return Ok(u8::try_from(code.exit_status()).unwrap_or(1));
                    }
                    other => return Err(kexin::federation::unexpected(&node, &other)),
                };
            if let Some(out) = out {
                let vouch = vouch.context("the node did not vouch for its log key")?;
                return write_bundle(&space, &node, proof, *vouch, cosigned, &out, format);
            }
            let key = kexin_engine::audit::NoteKey::parse(&verifier)?;
            if let Err(e) = proof.check(&key) {
                // As `kexin audit verify` when the log does not verify.
                println!("NOT VERIFIED: {e}");
                return Ok(5);
            }
            if format == Format::Json {
                println!("{}", serde_json::to_string(&proof)?);
            } else {
                println!(
                    "verified: entry #{} is leaf {} of node {node}'s log of {} entries, under the checkpoint signed by {}",
                    proof.seq, proof.leaf, proof.size, key.name
                );
                if let Some(e) = &proof.entry {
                    println!("{e}");
                }
            }
            Ok(0)
        }
        AuditAction::Check {
            file,
            space,
            operator_key,
            format,
        } => check(&file, space, operator_key, format),
        AuditAction::List {
            space,
            node,
            actor,
            key,
            local,
        } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
            if !local {
                let member = actor.context(MEMBER_NEEDED)?;
                let me = kexin::members::load_key(&space.dir, &member, key.as_deref())?;
                return Ok(match remote_log(&space, &node, &me, &[])? {
                    Remote::Checked(r) => {
                        for e in &r.shown {
                            println!("{}", serde_json::to_string(e)?);
                        }
                        0
                    }
                    Remote::Refused(code) => code,
                    Remote::Failed => 5,
                });
            }
            let dir = space.dir.join(&node);
            // Listing must not create state: a node that never ran has
            // no log to list.
            anyhow::ensure!(
                dir.join("kexin.db").is_file(),
                "node {node} has no audit log yet ({} is missing)",
                dir.join("kexin.db").display()
            );
            let store =
                kexin_engine::store::Store::open(&dir, &format!("kexin/{}/{}", space.name, node))?;
            for e in store.entries()? {
                println!("{}", serde_json::to_string(&e)?);
            }
            Ok(0)
        }
    }
}

/// The tree size to prove under: of the checkpoints the witnesses
/// countersigned that include entry `seq`, the size most of them hold (the
/// larger on a tie); `None` (the latest) when none does.
fn common_size(got: &[std::result::Result<Cosignature, String>], seq: u64) -> Option<u64> {
    let mut held: std::collections::BTreeMap<u64, usize> = Default::default();
    for c in got.iter().flatten() {
        if let Some(size) = note_size(&c.note).filter(|s| *s >= seq) {
            *held.entry(size).or_default() += 1;
        }
    }
    held.into_iter()
        .max_by_key(|(size, n)| (*n, *size))
        .map(|(size, _)| size)
}

/// The tree size a signed note states (its second line), unchecked.
fn note_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// The body of a signed note (what its signatures sign).
fn note_body(note: &str) -> &str {
    note.split_once("\n\n").map_or(note, |(b, _)| b)
}

/// `kexin audit prove --local`: on the node's own machine, from its folder;
/// the node's member key (space/keys) vouches for its log key. No witness
/// is asked.
fn prove_local(
    space: Space,
    node: &str,
    actor: &str,
    seq: u64,
    out: Option<PathBuf>,
    format: Format,
) -> Result<u8> {
    let space = Arc::new(space);
    let rt = runtime()?;
    let n = rt.block_on(Node::open(Arc::clone(&space), node))?;
    let (proof, verifier) = match n.audit_proof(actor, seq) {
        Ok(p) => p,
        Err(kexin_engine::Error::Refused(r)) => {
            println!("refused {}: {}", r.code, r.rule);
            return Ok(u8::try_from(r.code.exit_status()).unwrap_or(1));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(out) = out else {
        let key = NoteKey::parse(&verifier)?;
        proof.check(&key)?;
        println!("{}", serde_json::to_string(&proof)?);
        return Ok(0);
    };
    let (cfg, me) = kexin::federation::node_identity(&space.dir, node)?;
    let vouch = kexin::witness::vouch(&space, &cfg, &me, node, &verifier)?;
    write_bundle(&space, node, proof, vouch, vec![], &out, format)
}

/// Assemble, check (under the space's operator key) and write an evidence
/// bundle; print what it holds and which witnesses are not in it.
fn write_bundle(
    space: &Space,
    node: &str,
    proof: kexin_engine::store::AuditProof,
    vouch: kexin_engine::evidence::Vouch,
    cosigned: Vec<std::result::Result<Cosignature, String>>,
    out: &std::path::Path,
    format: Format,
) -> Result<u8> {
    let Some(text) = &proof.entry else {
        println!(
            "refused {}: the entry is shown (and bundled) to its actor, the node's data holders and the operator only",
            kexin_engine::Code::Auth
        );
        return Ok(u8::try_from(kexin_engine::Code::Auth.exit_status()).unwrap_or(3));
    };
    let entry: kexin_engine::audit::AuditEntry = serde_json::from_str(text)?;
    let op = space
        .operator_key
        .context("space.toml has no space.operator_key")?;
    let mut left_out = Vec::new();
    let mut witnesses = Vec::new();
    for c in cosigned {
        match c {
            Ok(c) if note_body(&c.note) == note_body(&proof.checkpoint) => witnesses.push(c),
            Ok(c) => left_out.push(format!(
                "{} countersigned another checkpoint (size {})",
                c.witness,
                note_size(&c.note).unwrap_or_default()
            )),
            Err(why) => left_out.push(why),
        }
    }
    let bundle = Bundle {
        format: kexin_engine::evidence::FORMAT.into(),
        space: space.name.clone(),
        node: node.to_string(),
        operator_key: hex::encode(op.as_bytes()),
        binds: Binds::of(&entry),
        proof,
        vouch,
        witnesses,
    };
    let checked = match bundle.check(&op) {
        Ok(c) => c,
        Err(e) => {
            println!("NOT VERIFIED: {e}");
            return Ok(5);
        }
    };
    let tmp = out.with_extension("kexin-tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&bundle)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({
                "status": "written",
                "file": out.display().to_string(),
                "seq": checked.seq,
                "size": checked.size,
                "witnesses": checked.witnesses.keys().collect::<Vec<_>>(),
                "left_out": left_out,
            })
        );
    } else {
        println!(
            "wrote {}: entry #{} of node {node} ({} {}), in its log of {} entries{}",
            out.display(),
            checked.seq,
            checked.entry.kind,
            checked.entry.decision,
            checked.size,
            witnesses_of(&checked)
                .map(|w| format!(", countersigned by {w}"))
                .unwrap_or_default()
        );
        for why in &left_out {
            println!("  not countersigned: {why}");
        }
    }
    Ok(0)
}

/// The witnesses whose countersignature checked, comma-separated; `None`
/// when there were none.
fn witnesses_of(checked: &kexin_engine::evidence::Checked) -> Option<String> {
    (!checked.witnesses.is_empty()).then(|| {
        checked
            .witnesses
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// `kexin audit check FILE`: verify a bundle offline.
pub(crate) fn check(
    file: &std::path::Path,
    space: Option<PathBuf>,
    operator_key: Option<String>,
    format: Format,
) -> Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let not_verified = |why: String| -> Result<u8> {
        if format == Format::Json {
            println!(
                "{}",
                serde_json::json!({"status": "not verified", "reason": why})
            );
        } else {
            println!("NOT VERIFIED: {why}");
        }
        Ok(5)
    };
    let Ok(bundle) = serde_json::from_str::<Bundle>(&text) else {
        return not_verified(format!("{} is not an evidence bundle", file.display()));
    };
    let space = space.map(|d| Space::load(&d)).transpose()?;
    let (op, anchor) = match (&operator_key, &space) {
        (Some(hex_key), _) => (
            kexin_engine::identity::parse_public_key(hex_key)
                .context("--operator-key is not a hex ed25519 public key")?,
            "the operator key given",
        ),
        (None, Some(s)) => (
            s.operator_key
                .context("space.toml has no space.operator_key")?,
            "the operator key of space.toml",
        ),
        (None, None) => match kexin_engine::identity::parse_public_key(&bundle.operator_key) {
            Some(k) => (
                k,
                "the operator key the bundle names (not pinned: pass --space or --operator-key)",
            ),
            None => return not_verified("the bundle names no valid operator key".into()),
        },
    };
    let checked = match bundle.check(&op) {
        Ok(c) => c,
        Err(e) => return not_verified(e.to_string()),
    };
    if let Some(s) = &space {
        if s.name != checked.space {
            return not_verified(format!("the bundle is of space {}", checked.space));
        }
        let speaks_for = |member: &str, node: &str| {
            s.members
                .get(member)
                .is_some_and(|m| m.nodes.iter().any(|n| n == node))
        };
        if !speaks_for(&checked.node_member, &checked.node) {
            return not_verified(format!(
                "{} does not speak for node {} in space.toml",
                checked.node_member, checked.node
            ));
        }
        for (w, m) in &checked.witnesses {
            if !speaks_for(m, w) {
                return not_verified(format!("{m} does not speak for node {w} in space.toml"));
            }
        }
    }
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({
                "status": "verified",
                "space": checked.space,
                "node": checked.node,
                "seq": checked.seq,
                "size": checked.size,
                "root": checked.root,
                "anchor": anchor,
                "witnesses": checked.witnesses.keys().collect::<Vec<_>>(),
                "entry": checked.entry,
                "binds": checked.binds,
            })
        );
    } else {
        let e = &checked.entry;
        println!(
            "verified under {anchor}: entry #{} of node {} (space {}) is leaf {} of its log of {} entries, root {}",
            checked.seq,
            checked.node,
            checked.space,
            checked.seq - 1,
            checked.size,
            checked.root
        );
        println!(
            "  {} {} by {} under scene {} at {}",
            e.kind, e.decision, e.actor, e.scene, e.time
        );
        println!(
            "  log key vouched for by {}; countersigned by {}",
            checked.node_member,
            witnesses_of(&checked).unwrap_or_else(|| "no witness".into())
        );
        let b = &checked.binds;
        let mut lines = vec![format!("policy {}", b.policy_sha256)];
        let mut opt = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                lines.push(format!("{name} {v}"));
            }
        };
        opt("sql", &b.sql_sha256);
        opt("plan", &b.plan_sha256);
        opt("consent set", &b.consent_sha256);
        opt("output", &b.output_sha256);
        opt("contract", &b.contract);
        opt("session", &b.session);
        for (d, h) in &b.data {
            lines.push(format!("data {d} {h}"));
        }
        for u in &b.udfs {
            lines.push(format!("udf {u}"));
        }
        for l in lines {
            println!("  binds {l}");
        }
    }
    Ok(0)
}

/// `; consistent with N checkpoint(s) kept elsewhere`, when there were any.
fn consistent(kept: usize) -> String {
    if kept > 0 {
        format!("; consistent with {kept} checkpoint(s) kept elsewhere")
    } else {
        String::new()
    }
}

/// How reading a node's log through its server ended.
enum Remote {
    Checked(LogReport),
    /// The node refused (printed); the exit status.
    Refused(u8),
    /// The log did not verify (printed).
    Failed,
}

/// Read node `node`'s whole log through its server as the holder of `me`
/// and check it ([`check_pages`]) against the checkpoints in `kept`.
fn remote_log(
    space: &Space,
    node: &str,
    me: &SigningKey,
    kept: &[(String, String)],
) -> Result<Remote> {
    let (pages, verifier) = match kexin::federation::read_log(space, node, me)? {
        Ok(read) => read,
        Err((code, rule)) => {
            println!("refused {code}: {rule}");
            return Ok(Remote::Refused(
                u8::try_from(code.exit_status()).unwrap_or(1),
            ));
        }
    };
    let key = NoteKey::parse(&verifier)?;
    match check_pages(&origin(&space.name, node), &key, &pages, kept) {
        Ok(r) => Ok(Remote::Checked(r)),
        Err(e) => {
            println!("audit log of node {node} FAILED verification: {e}");
            Ok(Remote::Failed)
        }
    }
}

/// Replace `path` with `note`, atomically (a crash leaves the old one).
fn write_note(path: &std::path::Path, note: &str) -> Result<()> {
    let tmp = path.with_extension("kexin-tmp");
    std::fs::write(&tmp, note).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
