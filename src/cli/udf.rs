//! `kexin udf`: approve a WebAssembly module for a scene on the holder's
//! nodes (a signed approval, through each node's server by default), and
//! list what is approved.

use std::sync::Arc;

use anyhow::{Context, Result};
use kexin::Format;
use kexin_engine::policy::Space;

use super::target::Target;
use crate::UdfAction;

fn signature(f: &kexin_sandbox::Function) -> String {
    let args: Vec<String> = f
        .args
        .iter()
        .map(|t| {
            serde_json::to_string(t)
                .unwrap_or_default()
                .replace('"', "")
        })
        .collect();
    let ret = serde_json::to_string(&f.returns)
        .unwrap_or_default()
        .replace('"', "");
    let kind = match f.kind {
        kexin_sandbox::Kind::Scalar => "scalar",
        kexin_sandbox::Kind::Aggregate => "aggregate",
    };
    let domain = if f.domain.is_some() {
        " (finite domain)"
    } else {
        ""
    };
    format!("{kind} {}({}) -> {ret}{domain}", f.name, args.join(", "))
}

pub(crate) fn udf(action: UdfAction) -> Result<u8> {
    match action {
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
                    Ok(r) => {
                        if format == Format::Json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
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
                                println!("  {}", signature(f));
                            }
                        }
                    }
                    Err(r) => {
                        if format == Format::Json {
                            println!(
                                "{}",
                                serde_json::json!({"node": n, "status": "refused", "code": r.code, "rule": r.rule})
                            );
                        } else {
                            println!("node {n}: refused {}: {}", r.code, r.rule);
                        }
                        return Ok(u8::try_from(r.code.exit_status()).unwrap_or(1));
                    }
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
                        println!("  {}", signature(f));
                    }
                }
            }
            Ok(0)
        }
    }
}
