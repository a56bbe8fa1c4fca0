//! `kexin audit`: verify a node's log (through its server, or its folder
//! with `--local`; against checkpoints kept elsewhere and its witnesses),
//! show it to the witnesses now, list its entries, and prove one entry's
//! inclusion through the node's server.

use std::sync::Arc;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kexin::Format;
use kexin_engine::audit::NoteKey;
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
        } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let wait = kexin::federation::query_wait(&space)?;
            let msg = kexin::federation::ToNode::Prove { seq };
            let (proof, verifier) =
                match kexin::federation::ask(&space, &node, &signing, &msg, wait)? {
                    kexin::federation::FromNode::Proof { proof, verifier } => (*proof, verifier),
                    kexin::federation::FromNode::Refused { code, rule, .. } => {
                        println!("refused {code}: {rule}");
                        return Ok(u8::try_from(code.exit_status()).unwrap_or(1));
                    }
                    other => return Err(kexin::federation::unexpected(&node, &other)),
                };
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
