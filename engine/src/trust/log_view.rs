//! A node's log as a remote client reads and checks it.
//!
//! The node serves its log in pages under one signed checkpoint: every
//! leaf hash of the page's range, and the entries in that range the asker
//! may see (their bytes exactly as hashed). A client that has read every
//! page recomputes the tree's root from the leaves and compares it with
//! the checkpoint, checks that each entry it was shown hashes to its leaf,
//! and that every checkpoint it kept from earlier (its own saved one, the
//! witnesses') is the root of a prefix of this log. So a member who holds
//! a receipt can see that the entry is there unchanged, and a log cut or
//! rewritten below what anyone kept fails, without the client ever
//! seeing an entry that is not theirs.
//!
//! Leaf hashes reveal nothing about entries the client cannot see: every
//! entry appended since leaves were salted carries 16 random bytes
//! ([`crate::audit::AuditEntry::salt`]), so its leaf cannot be matched by
//! guessing its fields (a held result's output digest, say).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, Checkpoint, Hash, NoteKey, leaf_hash, tree_root};
use crate::error::{Error, Result};
use crate::store::Store;

/// The most leaves one page carries.
pub const MAX_PAGE: u64 = 4096;

/// One page of a node's log under one signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The signed checkpoint (C2SP signed note) the page is read under.
    pub checkpoint: String,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The sequence number of the page's first leaf (1-based).
    pub from: u64,
    /// Leaf hashes (hex) of entries `from`, `from + 1`, … in order.
    pub leaves: Vec<String>,
    /// The entries in the page's range that the asker may see, as JSON
    /// exactly as hashed, in order.
    pub entries: Vec<String>,
}

impl LogPage {
    /// The sequence number after the page's last leaf: where the next page
    /// starts (`size + 1` when this was the last).
    pub fn next(&self) -> u64 {
        self.from + self.leaves.len() as u64
    }
}

impl Store {
    /// Leaves `from ..= from + limit - 1` (clipped to the tree) under the
    /// signed checkpoint of tree size `size` (the latest when `None`), with
    /// every entry of that range (the caller drops those the asker may not
    /// see). `None` when the log has no such checkpoint.
    pub fn log_page(&self, size: Option<u64>, from: u64, limit: u64) -> Result<Option<LogPage>> {
        let checkpoint: Option<(i64, String)> = match size {
            None => self.conn.query_row(
                "SELECT size, note FROM checkpoint ORDER BY size DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            ),
            Some(s) => self.conn.query_row(
                "SELECT size, note FROM checkpoint WHERE size = ?1",
                params![i64::try_from(s).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            ),
        }
        .optional()?;
        let Some((size, checkpoint)) = checkpoint else {
            return Ok(None);
        };
        let size = size as u64;
        let from = from.max(1);
        let last = from
            .saturating_add(limit.clamp(1, MAX_PAGE))
            .saturating_sub(1)
            .min(size);
        let mut page = LogPage {
            checkpoint,
            size,
            from,
            leaves: Vec::new(),
            entries: Vec::new(),
        };
        if from > size {
            return Ok(Some(page));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT entry, leaf FROM audit WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")?;
        let rows = stmt.query_map(params![from as i64, last as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (entry, leaf) = row?;
            page.leaves.push(hex::encode(leaf));
            page.entries
                .push(String::from_utf8(entry).map_err(Error::internal)?);
        }
        Ok(Some(page))
    }
}

/// What a client's check of a node's log found.
#[derive(Debug, Clone, PartialEq)]
pub struct LogReport {
    /// The tree size of the checkpoint the log was read under.
    pub size: u64,
    /// The root it recomputed, equal to the checkpoint's (hex).
    pub root_hex: String,
    /// The entries the client was shown, each checked against its leaf.
    pub shown: Vec<AuditEntry>,
    /// The checkpoint itself, to keep for the next check.
    pub checkpoint: String,
}

/// Check pages read from the log of `origin` (`kexin/<space>/<node>`)
/// under one checkpoint signed by `key`: they cover leaves 1 to its size
/// in order, the leaves make its root, each entry shown hashes to its
/// leaf and carries its own sequence number, and every checkpoint in
/// `kept` (label, signed note) verifies under `key` and is the root of a
/// prefix of the log.
pub fn check_pages(
    origin: &str,
    key: &NoteKey,
    pages: &[LogPage],
    kept: &[(String, String)],
) -> Result<LogReport> {
    let fail = |s: String| Err(Error::Verify(s));
    let Some(first) = pages.first() else {
        return fail("the node sent no page of its log".into());
    };
    let cp = Checkpoint::open(&first.checkpoint, key)?;
    if cp.origin != origin {
        return fail(format!(
            "the checkpoint is of log {:?}, not {origin:?}",
            cp.origin
        ));
    }
    // The size is the node's claim: reserve for what the pages bring, not
    // for what it says.
    let sent: usize = pages.iter().map(|p| p.leaves.len()).sum();
    let mut leaves: Vec<Hash> = Vec::with_capacity(sent);
    let mut shown = Vec::new();
    for page in pages {
        if page.checkpoint != first.checkpoint || page.size != cp.size {
            return fail("the pages were read under different checkpoints".into());
        }
        if page.from != leaves.len() as u64 + 1 {
            return fail(format!(
                "a page starts at entry {} where entry {} was expected",
                page.from,
                leaves.len() + 1
            ));
        }
        let start = leaves.len();
        for h in &page.leaves {
            let Some(leaf) = hex::decode(h).ok().and_then(|v| Hash::try_from(v).ok()) else {
                return fail("a leaf hash is malformed".into());
            };
            leaves.push(leaf);
        }
        let mut last_seq = 0u64;
        for text in &page.entries {
            let e: AuditEntry = serde_json::from_str(text)
                .map_err(|_| Error::Verify("an entry shown does not parse".into()))?;
            let in_page = e.seq >= page.from && e.seq < page.from + page.leaves.len() as u64;
            if !in_page || e.seq <= last_seq {
                return fail(format!("entry {} is shown outside its place", e.seq));
            }
            last_seq = e.seq;
            if leaf_hash(text.as_bytes()) != leaves[start + (e.seq - page.from) as usize] {
                return fail(format!(
                    "entry {} does not hash to its leaf: it was edited",
                    e.seq
                ));
            }
            shown.push(e);
        }
    }
    if leaves.len() as u64 != cp.size {
        return fail(format!(
            "the pages hold {} leaves but the checkpoint covers {}",
            leaves.len(),
            cp.size
        ));
    }
    if tree_root(&leaves) != cp.root {
        return fail("the leaves do not make the checkpoint's root".into());
    }
    for (what, note) in kept {
        let old = Checkpoint::open(note, key).map_err(|e| Error::Verify(format!("{what}: {e}")))?;
        if old.origin != origin {
            return fail(format!("{what} is of another log"));
        }
        if old.size > cp.size {
            return fail(format!(
                "{what} covers {} entries but the log now has {}: entries were deleted or the log was rolled back",
                old.size, cp.size
            ));
        }
        if tree_root(&leaves[..old.size as usize]) != old.root {
            return fail(format!(
                "{what} (size {}) does not match the log: entries were edited, reordered or replaced",
                old.size
            ));
        }
    }
    Ok(LogReport {
        size: cp.size,
        root_hex: hex::encode(cp.root),
        shown,
        checkpoint: first.checkpoint.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Kind};
    use crate::store::NodeKeys;
    use crate::witness::origin;

    /// A log of `n` entries by alternating actors, and its keys.
    fn log(dir: &std::path::Path, n: usize) -> (Store, NodeKeys, Vec<String>) {
        let keys = NodeKeys::load_or_create(dir, "kexin/s/h1").unwrap();
        let mut store = Store::open(dir, &origin("s", "h1")).unwrap();
        let mut notes = Vec::new();
        for i in 0..n {
            let actor = if i % 2 == 0 { "alice" } else { "bob" };
            let e = AuditEntry::new("h1", actor, "s", Kind::Query, Decision::Released, &[0; 32]);
            notes.push(store.append(e, &keys).unwrap().1);
        }
        (store, keys, notes)
    }

    /// Every page of the log, read as `limit`-leaf pages under one
    /// checkpoint, with only `who`'s entries kept.
    fn read(store: &Store, limit: u64, who: &str) -> Vec<LogPage> {
        let mut pages = Vec::new();
        let mut page = store.log_page(None, 1, limit).unwrap().unwrap();
        loop {
            page.entries
                .retain(|e| e.contains(&format!("\"actor\":\"{who}\"")));
            let (size, next) = (page.size, page.next());
            pages.push(page);
            if next > size {
                return pages;
            }
            page = store.log_page(Some(size), next, limit).unwrap().unwrap();
        }
    }

    #[test]
    fn pages_make_the_checkpoint_root_and_show_only_what_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let (store, keys, notes) = log(d.path(), 11);
        let o = origin("s", "h1");
        for limit in [1, 3, 4, 11, 100] {
            let pages = read(&store, limit, "bob");
            let kept = vec![("saved".to_string(), notes[4].clone())];
            let r = check_pages(&o, &keys.note, &pages, &kept).unwrap();
            assert_eq!(r.size, 11);
            assert_eq!(
                r.shown.iter().map(|e| e.seq).collect::<Vec<_>>(),
                vec![2, 4, 6, 8, 10]
            );
            assert!(r.shown.iter().all(|e| e.actor == "bob"));
        }
        // Every new entry is salted: two entries with the same fields in the
        // same second still hash to different leaves.
        let page = store.log_page(None, 1, 100).unwrap().unwrap();
        let salts: std::collections::BTreeSet<_> = page
            .entries
            .iter()
            .map(|e| serde_json::from_str::<AuditEntry>(e).unwrap().salt.unwrap())
            .collect();
        assert_eq!(salts.len(), 11);
        // The last page of a read ends the log: nothing past it.
        let past = store.log_page(None, 12, 5).unwrap().unwrap();
        assert!(past.leaves.is_empty() && past.entries.is_empty());
    }

    #[test]
    fn an_edited_missing_or_rolled_back_log_fails() {
        let d = tempfile::tempdir().unwrap();
        let (store, keys, notes) = log(d.path(), 6);
        let o = origin("s", "h1");
        let good = read(&store, 4, "alice");
        let check = |pages: &[LogPage], kept: &[(String, String)]| {
            check_pages(&o, &keys.note, pages, kept)
                .unwrap_err()
                .to_string()
        };
        // An entry shown with another value than the one hashed.
        let mut edited = good.clone();
        edited[0].entries[0] = edited[0].entries[0].replace("\"alice\"", "\"carol\"");
        assert!(check(&edited, &[]).contains("edited"));
        // A leaf left out, a page missing, a leaf replaced.
        let mut short = good.clone();
        short[1].leaves.pop();
        assert!(check(&short, &[]).contains("covers"));
        assert!(check(&good[..1], &[]).contains("covers"));
        let mut swapped = good.clone();
        swapped[0].leaves[1] = hex::encode([7u8; 32]);
        assert!(check(&swapped, &[]).contains("root"));
        // An entry moved to another place.
        let mut moved = good.clone();
        let e = moved[0].entries.remove(1);
        moved[1].entries.insert(0, e);
        assert!(check(&moved, &[]).contains("outside its place"));
        // Another log's name, another key.
        assert!(
            check_pages(&origin("s", "h2"), &keys.note, &good, &[])
                .unwrap_err()
                .to_string()
                .contains("not")
        );
        let other = tempfile::tempdir().unwrap();
        let (_, k2, _) = log(other.path(), 0);
        assert!(check_pages(&o, &k2.note, &good, &[]).is_err());
        // A checkpoint kept from a longer log: the log was cut.
        let (mut store2, keys2, _) = (store, keys, ());
        let (_, seven) = store2
            .append(
                AuditEntry::new("h1", "bob", "s", Kind::Query, Decision::Released, &[0; 32]),
                &keys2,
            )
            .unwrap();
        let cut = check_pages(&o, &keys2.note, &good, &[("saved".into(), seven)])
            .unwrap_err()
            .to_string();
        assert!(cut.contains("rolled back"), "{cut}");
        // A kept checkpoint of the same size with another root: rewritten.
        let fork_dir = tempfile::tempdir().unwrap();
        std::fs::copy(d.path().join("node.key"), fork_dir.path().join("node.key")).unwrap();
        let (_, _, fork) = log(fork_dir.path(), 6);
        let forked = check_pages(&o, &keys2.note, &good, &[("saved".into(), fork[5].clone())])
            .unwrap_err()
            .to_string();
        assert!(forked.contains("does not match"), "{forked}");
        assert!(
            check_pages(
                &o,
                &keys2.note,
                &good,
                &[("saved".into(), notes[2].clone())]
            )
            .is_ok()
        );
    }
}
