//! Requests one node answers alone, for members who are not on the node's
//! machine: a researcher's query and the contracts a member may see. Each
//! goes through the same engine call as the in-process path
//! (`kexin query --local`), so the rules, the audit entry and the JSON
//! shape are the same; the link's member must be the request's signer.

use anyhow::Result;
use kexin_engine::identity::{QueryBody, Signed};

use super::server::NodeServer;
use super::wire::FromNode;
use crate::net::Link;

impl NodeServer {
    /// A researcher's query on this node, answered with its outcome.
    pub(super) fn query(&self, mut link: Link, member: &str, env: Signed<QueryBody>) -> Result<()> {
        if env.body.member != member {
            return link.send_json(&FromNode::refused(super::services::OTHER_SIGNER, None));
        }
        let _slot = self.query_slot();
        let outcome = self.rt.block_on(self.node.query_signed(&env));
        link.send_json(&FromNode::Outcome(Box::new(outcome)))
    }

    /// The contracts on this node the link's member may see: all of them
    /// for a data holder of the node, their own for anyone else.
    pub(super) fn contracts(&self, mut link: Link, member: &str) -> Result<()> {
        match self.node.contracts_for(member) {
            Ok(c) => link.send_json(&FromNode::Contracts(c)),
            Err(e) => link.send_json(&FromNode::refused(e.as_refusal(), None)),
        }
    }
}
