//! `kexin udf`: approve a WebAssembly module for a scene on the holder's
//! nodes (a signed approval, through each node's server by default), list
//! what is approved, and the researcher's side: submit a module for review,
//! which a data holder lists and approves by its digest.

use std::sync::Arc;

use anyhow::{Context, Result};
use kexin::Format;
use kexin_engine::policy::Space;

use super::target::Target;
use crate::UdfAction;

/// Print an approval as `udf register` and `udf approve` do.
fn print_registration(r: &kexin_engine::node::Registration, format: Format) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "node {}: {} {} for scene {} (audit seq {})",
        r.node,
        if r.newly_approved {
            "approved"
        } else {
            "already approved"
        },
        r.digest,
        r.scene,
        r.audit_seq
    );
    for f in &r.functions {
        println!("  {}", kexin::render::udf_signature(f));
    }
    Ok(())
}

/// The space, the node (default: the space's first), the member's key and
/// the node's server, for a command one member sends to one node.
fn on_node(
    space: &std::path::Path,
    node: Option<String>,
    actor: &str,
    key: Option<&std::path::Path>,
) -> Result<(Arc<Space>, String, ed25519_dalek::SigningKey, Target)> {
    let space = Arc::new(Space::load(space)?);
    let signing = kexin::members::load_key(&space.dir, actor, key)?;
    let n = node.unwrap_or_else(|| space.default_node().to_string());
    let target = Target::open(&space, Some(n.clone()), Some(&signing), false)?;
    Ok((space, n, signing, target))
}

/// Print a refusal for `node` as `udf register` does; the exit status.
fn refused(node: &str, r: &super::target::Refused, format: Format) -> u8 {
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({"node": node, "status": "refused", "code": r.code, "rule": r.rule, "audit_seq": r.audit_seq})
        );
    } else {
        println!("node {node}: refused {}: {}", r.code, r.rule);
    }
    u8::try_from(r.code.exit_status()).unwrap_or(1)
}

pub(crate) fn udf(action: UdfAction) -> Result<u8> {
    match action {
        UdfAction::Submit {
            space,
            scene,
            node,
            actor,
            key,
            format,
            file,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (space, n, signing, target) = on_node(&space, node, &actor, key.as_deref())?;
            let env = kexin::members::udf_submission(&space, &n, &actor, &signing, &scene, &bytes)?;
            match target.submit_udf(env, &bytes)? {
                Ok(s) if format == Format::Json => println!("{}", serde_json::to_string(&s)?),
                Ok(s) => {
                    println!(
                        "node {}: submitted {} for scene {} (audit seq {}); a data holder of the node approves it",
                        s.node, s.digest, s.scene, s.audit_seq
                    );
                    for f in &s.functions {
                        println!("  {}", kexin::render::udf_signature(f));
                    }
                }
                Err(r) => return Ok(refused(&n, &r, format)),
            }
            Ok(0)
        }
        UdfAction::Pending {
            space,
            node,
            scene,
            actor,
            key,
            format,
        } => {
            let (_, n, _, target) = on_node(&space, node, &actor, key.as_deref())?;
            match target.udf_submissions(&actor, scene)? {
                Ok(list) => {
                    for s in list {
                        if format == Format::Json {
                            println!("{}", serde_json::to_string(&s)?);
                            continue;
                        }
                        println!(
                            "{} {} {} by {} at {} ({})",
                            s.node,
                            s.scene,
                            s.digest,
                            s.submitted_by,
                            s.submitted_at,
                            if s.approved {
                                "approved"
                            } else {
                                "awaiting approval"
                            }
                        );
                        for f in &s.functions {
                            println!("  {}", kexin::render::udf_signature(f));
                        }
                    }
                    Ok(0)
                }
                Err(r) => Ok(refused(&n, &r, format)),
            }
        }
        UdfAction::Approve {
            space,
            node,
            scene,
            digest,
            actor,
            key,
            format,
        } => {
            let (space, n, signing, target) = on_node(&space, node, &actor, key.as_deref())?;
            let env =
                kexin::members::udf_approval_of(&space, &n, &actor, &signing, &scene, &digest)?;
            match target.approve_submitted(env)? {
                Ok(r) => print_registration(&r, format)?,
                Err(r) => return Ok(refused(&n, &r, format)),
            }
            Ok(0)
        }
        UdfAction::Register {
            space,
            scene,
            node,
            actor,
            key,
            local,
            format,
            file,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let nodes = if !node.is_empty() {
                node
            } else {
                match space.members.get(&actor) {
                    Some(m) if m.role == kexin_engine::identity::Role::Holder => m.nodes.clone(),
                    _ => space.nodes.clone(),
                }
            };
            for n in nodes {
                let target = Target::open(&space, Some(n.clone()), Some(&signing), local)?;
                let approval =
                    kexin::members::udf_approval(&space, &n, &actor, &signing, &scene, &bytes)?;
                match target.approve_udf(approval, &bytes)? {
                    Ok(r) => print_registration(&r, format)?,
                    Err(r) => return Ok(refused(&n, &r, format)),
                }
            }
            Ok(0)
        }
        UdfAction::List {
            space,
            scene,
            node,
            actor,
            key,
            local,
            format,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let nodes = match node {
                Some(n) => vec![n],
                None => space.nodes.clone(),
            };
            let signing = match (&actor, local) {
                (Some(a), false) => Some(kexin::members::load_key(&space.dir, a, key.as_deref())?),
                _ => None,
            };
            for n in nodes {
                let target = Target::open(&space, Some(n), signing.as_ref(), local)?;
                let listed = match target.udfs(scene.clone())? {
                    Ok(l) => l,
                    Err(r) => return super::print_refused(r, format),
                };
                for u in listed {
                    if format == Format::Json {
                        println!("{}", serde_json::to_string(&u)?);
                        continue;
                    }
                    println!(
                        "{} {} {} ({}{}){}",
                        u.node,
                        u.scene,
                        u.digest,
                        u.source,
                        u.approved_by
                            .as_deref()
                            .map(|b| format!(" by {b}"))
                            .unwrap_or_default(),
                        if u.loadable {
                            ""
                        } else {
                            " MISSING OR ALTERED"
                        }
                    );
                    for f in &u.functions {
                        println!("  {}", kexin::render::udf_signature(f));
                    }
                }
            }
            Ok(0)
        }
    }
}
