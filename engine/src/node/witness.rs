//! The node's side of witnessing: showing its checkpoint to its peers and
//! countersigning theirs. The witness table is [`crate::witness`].

use super::Node;
use crate::error::{Code, Error, Result};
use crate::store::AuditProof;
use crate::witness::origin;

impl Node {
    /// This node's latest checkpoint and its verifier key, to show to the
    /// witnesses; `None` before the first entry.
    pub fn checkpoint_for_witnesses(&self) -> Result<Option<(String, String)>> {
        let note = self.store_lock()?.latest_checkpoint()?;
        Ok(note.map(|n| (n, self.keys.note.verifier_key())))
    }

    /// Witness peer node `from`'s checkpoint: record it, and countersign
    /// it with this node's key (a signed note over the same checkpoint).
    pub fn witness_peer(
        &self,
        from: &str,
        verifier: &str,
        note: &str,
    ) -> Result<std::result::Result<String, &'static str>> {
        let origin = origin(&self.space.name, from);
        let accepted = self.store_lock()?.witness(&origin, verifier, note)?;
        Ok(accepted.map(|cp| cp.sign(&self.keys.note.name, &self.keys.signing)))
    }

    /// The evidence that audit entry `seq` is in this node's log, with the
    /// node's verifier key: for anyone, but the entry itself only for its
    /// actor, a data holder of this node and the operator (others get its
    /// leaf hash). A refusal when there is no such entry yet, and, for all
    /// but reviewers, while the entry is of a result held and not released.
    /// `member` is `""` for an anonymous caller (the node's HTTP API).
    pub fn audit_proof(&self, member: &str, seq: u64) -> Result<(AuditProof, String)> {
        let mut proof = self.store_lock()?.proof(seq)?.ok_or_else(|| {
            Error::refused(
                Code::Auth,
                "no such entry under the node's latest checkpoint",
            )
        })?;
        let entry = proof
            .entry
            .as_deref()
            .and_then(|e| serde_json::from_str::<crate::audit::AuditEntry>(e).ok());
        let reviewer = self.operator(member) || self.holder_here(member);
        // A held result's entry carries the digest of bytes not released
        // yet; its leaf hashes it too. Until release, only reviewers get
        // either: a digest of a small result can be matched by guessing.
        let unreleased = entry.as_ref().is_some_and(|e| {
            e.decision == crate::audit::Decision::Held.as_str()
                && !self.airlock().is_ok_and(|all| {
                    all.iter().any(|h| {
                        h.held_audit_seq == e.seq && h.state == crate::airlock::State::Released
                    })
                })
        });
        if unreleased && !reviewer {
            return Err(Error::refused(
                Code::Review,
                "a held result's audit entry is proved to its requester once it is released",
            ));
        }
        // An anonymous caller (no member: `""`) is nobody's actor.
        if !(reviewer || entry.is_some_and(|e| !member.is_empty() && e.actor == member)) {
            proof.entry = None;
        }
        Ok((proof, self.keys.note.verifier_key()))
    }

    /// The latest checkpoint of node `of` this node witnessed.
    pub fn witnessed(&self, of: &str) -> Result<Option<String>> {
        self.store_lock()?.witnessed(&origin(&self.space.name, of))
    }
}
