//! `kexin query`: a researcher's SQL under a scene on one node. By default
//! it is a client of the node's server (`kexin node`): the request is
//! signed with the researcher's key and sent over the researcher's
//! authenticated link, and the node answers with the outcome. `--local`
//! opens the node in this process instead (its state, master key and
//! data), which only the node's operator can do, on the node's machine.

use std::sync::Arc;

use anyhow::{Result, bail};
use ed25519_dalek::SigningKey;
use kexin_engine::contract::Contract;
use kexin_engine::node::Outcome;
use kexin_engine::policy::Space;

use super::target::Target;

/// What `kexin query` was asked.
#[derive(Debug)]
pub(crate) struct Ask {
    pub node: String,
    pub scene: String,
    pub actor: String,
    pub contract: Option<String>,
    pub sql: String,
}

/// The contract a query is signed for: the named one, or the researcher's
/// only active contract for the scene on the node.
fn bind_contract(ask: &Ask, contracts: Vec<Contract>) -> Option<String> {
    let mut active = contracts.into_iter().filter(|c| {
        c.state.active() && c.terms.requester == ask.actor && c.terms.scene == ask.scene
    });
    match (active.next(), active.next()) {
        (Some(c), None) => Some(c.id),
        _ => None,
    }
}

/// Sign the query for its contract and run it on the node: through its
/// server, or in this process when `local`.
pub(crate) fn run(space: &Arc<Space>, ask: &Ask, key: &SigningKey, local: bool) -> Result<Outcome> {
    let target = Target::open(space, Some(ask.node.clone()), Some(key), local)?;
    let contract = match &ask.contract {
        Some(c) => Some(c.clone()),
        None => match target.contracts()? {
            Ok(all) => bind_contract(ask, all),
            Err(r) => bail!("{}: {}", r.code, r.rule),
        },
    };
    let env = kexin::members::query(
        space, &ask.node, &ask.actor, key, &ask.scene, contract, &ask.sql,
    )?;
    target.query(env)
}

/// `kexin query --twin DIR`: the query on the mock twin in `dir`, in this
/// process, with the researcher's own modules `udfs` usable under the
/// scene there. No key and no contract: the twin's data is no one's.
pub(crate) fn run_twin(
    space: &Space,
    scene: &str,
    actor: &str,
    sql: &str,
    dir: &std::path::Path,
    udfs: &[std::path::PathBuf],
) -> Result<Outcome> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (manifest, node) = kexin::twin::open(space, dir).await?;
        if manifest.scene != scene {
            bail!(
                "the twin in {} is of scene {}; make one of {scene} with `kexin twin --scene {scene}`",
                dir.display(),
                manifest.scene
            );
        }
        for f in udfs {
            let bytes = std::fs::read(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            if let Err(kexin_engine::Error::Refused(r)) = node.twin_udf(scene, &bytes) {
                let mut refused = Outcome::refusal(r.code, r.rule.to_string(), None);
                refused.mock = true;
                return Ok(refused);
            }
        }
        // The twin's node marks its outcomes mock itself.
        Ok(node
            .query(&kexin_engine::node::QueryRequest::new(scene, actor, sql))
            .await)
    })
}

/// What `kexin twin` prints: where the twin is and what it holds.
pub(crate) fn twin_summary(
    m: &kexin::twin::Manifest,
    dir: &std::path::Path,
    format: kexin::Format,
) -> Result<String> {
    if format == kexin::Format::Json {
        return Ok(format!("{}\n", serde_json::to_string(m)?));
    }
    let mut out = format!(
        "mock twin of scene {} written to {} (seed {}, {} synthetic persons; no data was read)\n",
        m.scene,
        dir.display(),
        m.seed,
        m.persons
    );
    for (name, d) in &m.datasets {
        let cols: Vec<String> = d
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.value_type))
            .collect();
        out.push_str(&format!(
            "  {name}: {} rows ({})\n",
            d.rows,
            cols.join(", ")
        ));
    }
    if !m.aimed_at.is_empty() {
        out.push_str(&format!(
            "  half of the persons satisfy: {}\n",
            m.aimed_at.join(" AND ")
        ));
    }
    if m.not_aimed_at > 0 {
        out.push_str(&format!(
            "  {} filter(s) of the query are not aimed at (only col = v, IN, ranges, BETWEEN and LIKE 'prefix%' joined by AND are)\n",
            m.not_aimed_at
        ));
    }
    for d in &m.udfs_missing {
        out.push_str(&format!(
            "  the scene's module {d} is not in the space folder: pass it with `kexin query --twin … --udf FILE`\n"
        ));
    }
    out.push_str(&format!(
        "run queries on it: kexin query --space SPACE --twin {} --scene {} --as MEMBER \"SQL\"\n",
        dir.display(),
        m.scene
    ));
    Ok(out)
}
