//! `kexin audit`: verify a node's log (against checkpoints kept elsewhere
//! and its witnesses), show it to the witnesses now, list its entries, and
//! prove one entry's inclusion through the node's server.

use std::sync::Arc;

use anyhow::{Context, Result};
use kexin::Format;
use kexin_engine::node::Node;
use kexin_engine::policy::Space;

use crate::{AuditAction, node_name, runtime};

pub(crate) fn audit(action: AuditAction) -> Result<u8> {
    match action {
        AuditAction::Verify {
            space,
            node,
            checkpoint,
            witnesses,
            actor,
            key,
        } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
            let mut external = Vec::new();
            if let Some(p) = checkpoint {
                let note = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                external.push(("external checkpoint".to_string(), note));
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
            let witnessed = external.len();
            match kexin_engine::store::verify_with(&space.dir.join(&node), &external) {
                Ok(r) => {
                    println!(
                        "audit log of node {node} verified: {} entries, {} signed checkpoints, root {}{}",
                        r.entries,
                        r.checkpoints,
                        r.root_hex,
                        if witnessed > 0 {
                            format!("; consistent with {witnessed} checkpoint(s) kept elsewhere")
                        } else {
                            String::new()
                        }
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
        AuditAction::List { space, node } => {
            let space = Space::load(&space)?;
            let node = node_name(&space, node);
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
