//! The node's side of witnessing: showing its checkpoint to its peers and
//! countersigning theirs. The witness table is [`crate::witness`].

use super::Node;
use crate::error::Result;
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

    /// The latest checkpoint of node `of` this node witnessed.
    pub fn witnessed(&self, of: &str) -> Result<Option<String>> {
        self.store_lock()?.witnessed(&origin(&self.space.name, of))
    }
}
