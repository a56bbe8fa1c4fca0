//! Witnessed checkpoints: each node keeps, for every peer, the latest
//! signed checkpoint that peer showed it, and countersigns it.
//!
//! A node's own log is self-consistent by construction, so truncating it
//! and copying an older checkpoint into `audit.head` used to pass
//! `kexin audit verify`. With witnesses, the verifier also asks the peers
//! for the checkpoints they hold of this node: each must be a prefix of the
//! log (same root at its size), so a log cut or rolled back below what any
//! witness saw fails, without anyone having saved a checkpoint by hand.
//!
//! A witness accepts a checkpoint only from the node it names (the sender's
//! TLS identity), signed by the verifier key it first saw from that node
//! (pinned on first use), and never one smaller than what it holds, nor one
//! of the same size with another root (a fork). It does not check
//! consistency proofs between sizes: a log rewritten *and* regrown past
//! the witnessed size still fails verification at the node, because the
//! witnessed root must be the root of the log's prefix.

use crate::audit::{Checkpoint, NoteKey};
use crate::error::{Error, Result};
use crate::store::Store;
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The latest signed checkpoint of this log, if any entry was made.
    pub fn latest_checkpoint(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT note FROM checkpoint ORDER BY size DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Record `note` as the latest checkpoint of `origin` (the log's origin
    /// line) signed by `verifier`. Returns the checkpoint, or why it is
    /// not accepted.
    pub fn witness(
        &mut self,
        origin: &str,
        verifier: &str,
        note: &str,
    ) -> Result<std::result::Result<Checkpoint, &'static str>> {
        let Ok(key) = NoteKey::parse(verifier) else {
            return Ok(Err("the verifier key does not parse"));
        };
        let Ok(cp) = Checkpoint::open(note, &key) else {
            return Ok(Err("the checkpoint's signature does not verify"));
        };
        if cp.origin != origin {
            return Ok(Err("the checkpoint is of another log"));
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held: Option<(String, i64, String)> = tx
            .query_row(
                "SELECT verifier, size, note FROM witnessed WHERE origin = ?1",
                params![origin],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((pinned, size, held_note)) = held {
            if pinned != verifier.trim() {
                return Ok(Err("the node signs with another key than it did before"));
            }
            if (cp.size as i64) < size {
                return Ok(Err(
                    "the checkpoint is older than one already witnessed: the log was rolled back",
                ));
            }
            let before = Checkpoint::open(&held_note, &key)
                .map_err(|_| Error::internal("a witnessed checkpoint no longer verifies"))?;
            if cp.size as i64 == size && cp.root != before.root {
                return Ok(Err(
                    "the checkpoint has the size of one already witnessed but another root: the log forked",
                ));
            }
        }
        tx.execute(
            "INSERT INTO witnessed (origin, verifier, size, note) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (origin) DO UPDATE SET
                 size = excluded.size, note = excluded.note",
            params![origin, verifier.trim(), cp.size as i64, note],
        )?;
        tx.commit()?;
        Ok(Ok(cp))
    }

    /// The latest checkpoint of `origin` this node witnessed, with the
    /// verifier key it was pinned to.
    pub fn witnessed_with_key(&self, origin: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT verifier, note FROM witnessed WHERE origin = ?1",
                params![origin],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The latest checkpoint of `origin` this node witnessed.
    pub fn witnessed(&self, origin: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT note FROM witnessed WHERE origin = ?1",
                params![origin],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// The origin line of node `node`'s log in space `space`.
pub fn origin(space: &str, node: &str) -> String {
    format!("kexin/{space}/{node}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;
    use crate::store::NodeKeys;

    fn log(dir: &std::path::Path, name: &str) -> (Store, NodeKeys) {
        let keys = NodeKeys::load_or_create(dir, name).unwrap();
        (Store::open(dir, &origin("s", "h1")).unwrap(), keys)
    }

    fn entry() -> AuditEntry {
        AuditEntry::new(
            "h1",
            "alice",
            "s",
            crate::audit::Kind::Query,
            crate::audit::Decision::Released,
            &[0; 32],
        )
    }

    #[test]
    fn a_witness_moves_forward_only_and_pins_the_key() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut h1, k1) = log(a.path(), "kexin/s/h1");
        let (mut w, _) = log(b.path(), "kexin/s/h2");
        let o = origin("s", "h1");
        let vk = k1.note.verifier_key();
        h1.append(entry(), &k1).unwrap();
        let (_, two) = h1.append(entry(), &k1).unwrap();
        assert_eq!(
            h1.latest_checkpoint().unwrap().as_deref(),
            Some(two.as_str())
        );
        assert_eq!(w.witness(&o, &vk, &two).unwrap().unwrap().size, 2);
        // Again: fine. Another origin, a smaller size or another key: no.
        assert!(w.witness(&o, &vk, &two).unwrap().is_ok());
        assert!(w.witness(&origin("s", "h3"), &vk, &two).unwrap().is_err());
        let (_, three) = h1.append(entry(), &k1).unwrap();
        assert_eq!(w.witness(&o, &vk, &three).unwrap().unwrap().size, 3);
        assert!(
            w.witness(&o, &vk, &two)
                .unwrap()
                .unwrap_err()
                .contains("rolled back")
        );
        let c = tempfile::tempdir().unwrap();
        let (_, other) = log(c.path(), "kexin/s/h1");
        assert!(
            w.witness(&o, &other.note.verifier_key(), &three)
                .unwrap()
                .is_err()
        );
        assert_eq!(w.witnessed(&o).unwrap().as_deref(), Some(three.as_str()));
        // The node's own verification against what the witness holds.
        let held = vec![("checkpoint witnessed by h2".to_string(), three.clone())];
        assert!(crate::store::verify_with(a.path(), &held).is_ok());
    }
}
