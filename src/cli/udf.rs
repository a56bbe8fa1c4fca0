//! `kexin udf`: register an approved WebAssembly module for a scene on
//! the holder's nodes, and list what is approved.

use std::sync::Arc;

use anyhow::{Context, Result};
use kexin::Format;
use kexin_engine::node::Node;
use kexin_engine::policy::Space;

use crate::{UdfAction, runtime};

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
            format,
            file,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let nodes = if node.is_empty() {
                space.nodes.clone()
            } else {
                node
            };
            let rt = runtime()?;
            for n in nodes {
                let result = rt.block_on(async {
                    let node = Node::open(Arc::clone(&space), &n).await?;
                    anyhow::Ok(node.register_udf(&scene, &bytes, &actor))
                })?;
                match result {
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
                    Err(kexin_engine::Error::Refused(r)) => {
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
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(0)
        }
        UdfAction::List {
            space,
            scene,
            node,
            format,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let nodes = match node {
                Some(n) => vec![n],
                None => space.nodes.clone(),
            };
            let rt = runtime()?;
            for n in nodes {
                let listed = rt.block_on(async {
                    let node = Node::open(Arc::clone(&space), &n).await?;
                    anyhow::Ok(node.list_udfs(scene.as_deref())?)
                })?;
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
