//! The node's side of witnessing: showing its checkpoint to its peers and
//! countersigning theirs. The witness table is [`crate::witness`].

use super::Node;
use crate::audit::{AuditEntry, Decision};
use crate::error::{Code, Error, Result};
use crate::log_view::LogPage;
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
    /// node's verifier key: for anyone, but the entry itself only for those
    /// who may see it ([`Node::audit_log`]; others get its leaf hash). A
    /// refusal when there is no such entry yet, and, for all but reviewers,
    /// while the entry is of a result held and not released.
    /// `member` is `""` for an anonymous caller (the node's HTTP API).
    pub fn audit_proof(&self, member: &str, seq: u64) -> Result<(AuditProof, String)> {
        self.audit_proof_at(member, seq, None)
    }

    /// [`Self::audit_proof`] under the checkpoint of tree size `size` (the
    /// latest when `None`): the one the node's witnesses countersigned.
    pub fn audit_proof_at(
        &self,
        member: &str,
        seq: u64,
        size: Option<u64>,
    ) -> Result<(AuditProof, String)> {
        let mut proof = self.store_lock()?.proof_at(seq, size)?.ok_or_else(|| {
            Error::refused(
                Code::Auth,
                "no such entry under the node's latest checkpoint (or no checkpoint of that size)",
            )
        })?;
        let entry = proof
            .entry
            .as_deref()
            .and_then(|e| serde_json::from_str::<AuditEntry>(e).ok());
        let sight = self.sight(member)?;
        if entry.as_ref().is_some_and(|e| sight.unreleased(e)) && !sight.reviewer {
            return Err(Error::refused(
                Code::Review,
                "a held result's audit entry is proved to its requester once it is released",
            ));
        }
        if !entry.is_some_and(|e| sight.sees(&e)) {
            proof.entry = None;
        }
        Ok((proof, self.keys.note.verifier_key()))
    }

    /// One page of this node's log ([`crate::log_view`]) under the signed
    /// checkpoint of tree size `size` (the latest when `None`), from entry
    /// `from`, with the node's verifier key. Every leaf of the range is
    /// sent; of the entries, only those `member` may see: a data holder of
    /// this node and the operator see all, anyone else their own (as
    /// actor), except a held result's entry until it is released. An
    /// anonymous caller (`""`) sees none. A refusal while the log is empty
    /// or when it never had a checkpoint of that size.
    pub fn audit_log(
        &self,
        member: &str,
        size: Option<u64>,
        from: u64,
        limit: u64,
    ) -> Result<(LogPage, String)> {
        let mut page = self
            .store_lock()?
            .log_page(size, from, limit)?
            .ok_or_else(|| Error::refused(Code::Auth, "the log has no checkpoint of that size"))?;
        let sight = self.sight(member)?;
        page.entries
            .retain(|text| serde_json::from_str::<AuditEntry>(text).is_ok_and(|e| sight.sees(&e)));
        Ok((page, self.keys.note.verifier_key()))
    }

    /// What `member` may see of this node's audit entries.
    fn sight(&self, member: &str) -> Result<Sight> {
        // A held result's entry carries the digest of bytes not released
        // yet. Until release, only reviewers see it.
        let released = self
            .airlock()?
            .into_iter()
            .filter(|h| h.state == crate::airlock::State::Released)
            .map(|h| h.held_audit_seq)
            .collect();
        Ok(Sight {
            member: member.to_string(),
            reviewer: self.operator(member) || self.holder_here(member),
            released,
        })
    }

    /// The latest checkpoint of node `of` this node witnessed.
    pub fn witnessed(&self, of: &str) -> Result<Option<String>> {
        self.store_lock()?.witnessed(&origin(&self.space.name, of))
    }

    /// The latest checkpoint of node `of` this node witnessed,
    /// countersigned by this node's log key (as when it took it), for an
    /// evidence bundle. `None` when it holds none.
    pub fn cosign_witnessed(&self, of: &str) -> Result<Option<String>> {
        let store = self.store_lock()?;
        let Some((verifier, note)) = store.witnessed_with_key(&origin(&self.space.name, of))?
        else {
            return Ok(None);
        };
        let key = crate::audit::NoteKey::parse(&verifier)?;
        let cp = crate::audit::Checkpoint::open(&note, &key)?;
        Ok(Some(cp.sign(&self.keys.note.name, &self.keys.signing)))
    }

    /// This node's log verifier key (`node.pub`).
    pub fn log_verifier(&self) -> String {
        self.keys.note.verifier_key()
    }
}

/// Who is asking to see audit entries, and which held results were released.
struct Sight {
    member: String,
    reviewer: bool,
    /// The audit entries of held results that were released.
    released: std::collections::BTreeSet<u64>,
}

impl Sight {
    /// A held result's entry whose result is not released yet.
    fn unreleased(&self, e: &AuditEntry) -> bool {
        e.decision == Decision::Held.as_str() && !self.released.contains(&e.seq)
    }

    /// Whether the asker may see entry `e`. An anonymous caller (no
    /// member: `""`) is nobody's actor.
    fn sees(&self, e: &AuditEntry) -> bool {
        self.reviewer || (!self.member.is_empty() && e.actor == self.member && !self.unreleased(e))
    }
}
