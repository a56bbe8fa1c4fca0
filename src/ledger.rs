//! The DP ledger between nodes: a node replicates each DP charge to the
//! space's other node servers before it computes (see
//! [`kexin_engine::ledger`] for why), over the same mutually authenticated
//! TLS links federation uses. Only a node identity may send a charge; the
//! receiving node records it under the same caps and audits it as
//! `budget-charge` with the sending node's name.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::ledger::{Charge, PeerLedger};
use kexin_engine::node::Node;
use kexin_engine::policy::Space;

use crate::federation::{FedConfig, FromNode, ToNode, node_key};
use crate::net::Link;

/// This node's view of its peers' ledgers: their addresses and certified
/// keys, and this node's own key to present.
#[derive(Debug)]
pub struct NetLedger {
    space: Arc<Space>,
    cfg: FedConfig,
    me: SigningKey,
    name: String,
}

impl NetLedger {
    pub fn new(space: Arc<Space>, cfg: FedConfig, me: SigningKey, name: &str) -> NetLedger {
        NetLedger {
            space,
            cfg,
            me,
            name: name.to_string(),
        }
    }

    /// The peers of node `name` as `federation.toml` and the node's key file
    /// name them; `None` when the space has no federation file or the key
    /// is not on this machine (then DP charges cannot be replicated and
    /// DP queries in a space of several nodes are refused).
    pub fn for_node(space: &Arc<Space>, name: &str) -> Option<NetLedger> {
        let (cfg, me) = crate::federation::node_identity(&space.dir, name).ok()?;
        Some(NetLedger::new(Arc::clone(space), cfg, me, name))
    }

    /// Install on `node`.
    pub fn install(self, node: &Node) {
        node.set_peer_ledger(Arc::new(self));
    }

    fn charge_one(&self, peer: &str, charge: &Charge) -> std::result::Result<(), &'static str> {
        let addr = self
            .cfg
            .addr(peer)
            .map_err(|_| "a node of the space has no address")?;
        let key = node_key(&self.space, &self.cfg, peer)
            .map_err(|_| "a node of the space has no certified key")?;
        let mut link = Link::connect(&addr.address, &self.me, &key, self.cfg.round_timeout())
            .map_err(|_| "a node of the space is unreachable, so the charge cannot be recorded everywhere")?;
        link.send_json(&ToNode::Charge(charge.clone()))
            .map_err(|_| "a node of the space went away during the charge")?;
        match link.recv_json::<FromNode>() {
            Ok(FromNode::Charged { .. }) => Ok(()),
            Ok(FromNode::Refused { .. }) => Err(
                "another node's ledger cannot cover the charge (the requester's budget is spent there)",
            ),
            _ => Err("a node of the space did not answer the charge"),
        }
    }
}

impl PeerLedger for NetLedger {
    fn replicate(&self, charge: &Charge, skip: &[String]) -> std::result::Result<(), &'static str> {
        for peer in self
            .space
            .nodes
            .iter()
            .filter(|n| **n != self.name && !skip.contains(n))
        {
            self.charge_one(peer, charge)?;
        }
        Ok(())
    }
}

/// The node server's side: a peer node's charge, recorded or refused.
pub(crate) fn serve(
    node: &Node,
    cfg: &FedConfig,
    mut link: Link,
    member: &str,
    role: &str,
    charge: Charge,
) -> Result<()> {
    // Only a node of the space charges, and it is named by its TLS identity.
    let from = cfg
        .node_of(member, role)
        .ok_or_else(|| anyhow!("a DP charge from a member that is not a node"))?;
    let reply = match node.accept_peer_charge(&from, &charge) {
        Ok(spent) => FromNode::Charged {
            epsilon_spent: spent.epsilon_spent,
        },
        Err(e) => FromNode::refused(e.as_refusal(), None),
    };
    link.send_json(&reply)
}
