//! `kexin query`: a researcher's SQL under a scene on one node. By default
//! it is a client of the node's server (`kexin node`): the request is
//! signed with the researcher's key and sent over the researcher's
//! authenticated link, and the node answers with the outcome. `--local`
//! opens the node in this process instead (its state, master key and
//! data), which only the node's operator can do, on the node's machine.

use std::sync::Arc;

use anyhow::{Result, bail};
use ed25519_dalek::SigningKey;
use kexin::federation::{FromNode, ToNode};
use kexin_engine::contract::Contract;
use kexin_engine::node::{Node, Outcome};
use kexin_engine::policy::Space;

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
    if let Some(c) = &ask.contract {
        return Some(c.clone());
    }
    let mut active = contracts.into_iter().filter(|c| {
        c.state.active() && c.terms.requester == ask.actor && c.terms.scene == ask.scene
    });
    match (active.next(), active.next()) {
        (Some(c), None) => Some(c.id),
        _ => None,
    }
}

/// Run the query on the node's server.
pub(crate) fn remote(space: &Space, ask: &Ask, key: &SigningKey) -> Result<Outcome> {
    let wait = kexin::federation::query_wait(space)?;
    let contract = if ask.contract.is_some() {
        ask.contract.clone()
    } else {
        match kexin::federation::ask(space, &ask.node, key, &ToNode::Contracts, wait)? {
            FromNode::Contracts(c) => bind_contract(ask, c),
            FromNode::Refused { code, rule, .. } => bail!("{code}: {rule}"),
            other => return Err(kexin::federation::unexpected(&ask.node, &other)),
        }
    };
    let env = kexin::members::query(
        space, &ask.node, &ask.actor, key, &ask.scene, contract, &ask.sql,
    )?;
    match kexin::federation::ask(space, &ask.node, key, &ToNode::Query(env), wait)? {
        FromNode::Outcome(o) => Ok(*o),
        FromNode::Refused {
            code,
            rule,
            audit_seq,
        } => Ok(Outcome::refusal(code, rule, audit_seq)),
        other => Err(kexin::federation::unexpected(&ask.node, &other)),
    }
}

/// Run the query in this process, on the node's own machine.
pub(crate) fn local(space: &Arc<Space>, ask: &Ask, key: &SigningKey) -> Result<Outcome> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let n = Node::open(Arc::clone(space), &ask.node).await?;
        // DP charges go to every node of the space first: with the node's
        // key on this machine, reach them as the node does.
        if let Some(peers) = kexin::ledger::NetLedger::for_node(space, &ask.node) {
            peers.install(&n);
        }
        let contract = bind_contract(ask, n.contracts()?);
        let env = kexin::members::query(
            space, &ask.node, &ask.actor, key, &ask.scene, contract, &ask.sql,
        )?;
        anyhow::Ok(n.query_signed(&env).await)
    })
}
