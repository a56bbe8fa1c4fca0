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
