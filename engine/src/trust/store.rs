//! Durable node state: one SQLite database per node (WAL, synchronous=FULL),
//! the node's keys, and the audit log stored in it.
//!
//! Layout of a node directory (`<space>/<node>/`):
//! - `kexin.db`   — SQLite: `audit` (seq, entry, leaf), `checkpoint` (size, note),
//!   the peers' latest checkpoints this node witnessed `witnessed`,
//!   `udf_approval`, the DP budget ledger `dp_ledger`, the DP release cache
//!   `dp_release`, signed requests' nonces `request_nonce`, contracts
//!   `contract` and held results `airlock`
//! - `audit.head` — the latest signed checkpoint, the rollback witness
//! - `node.key`   — signing seed and master key (mode 0600)
//! - `node.pub`   — the signed-note verifier key of the node
//!
//! Why one file of about 770 lines: it owns the schema and every statement
//! that reads or writes the node's state except the witness table's
//! (`trust/witness.rs`), so a change to a table and all its uses are read
//! together, and the audit log's durability rules (one transaction per
//! entry with what it records) are enforced in one place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::audit::{
    AuditEntry, Checkpoint, Hash, NoteKey, inclusion_proof, leaf_hash, root_from_inclusion,
    tree_root,
};
use crate::error::{Error, Result};
use crate::keys::SecretKey;

pub use crate::clock::now_utc;

#[derive(Serialize, Deserialize)]
struct KeyFile {
    signing_seed: String,
    master_key: String,
}

/// A node's secrets: the checkpoint signing key and the master key from
/// which per-scene pseudonym and threshold keys are derived.
#[derive(Debug)]
pub struct NodeKeys {
    pub signing: SigningKey,
    pub master: SecretKey,
    pub note: NoteKey,
}

impl NodeKeys {
    /// Load `node.key`, creating it (mode 0600) on first use.
    pub fn load_or_create(node_dir: &Path, key_name: &str) -> Result<NodeKeys> {
        std::fs::create_dir_all(node_dir)?;
        let path = node_dir.join("node.key");
        if !path.exists() {
            let mut seed = [0u8; 32];
            let mut master = [0u8; 32];
            getrandom::fill(&mut seed).map_err(Error::internal)?;
            getrandom::fill(&mut master).map_err(Error::internal)?;
            let kf = KeyFile {
                signing_seed: hex::encode(seed),
                master_key: hex::encode(master),
            };
            let text = serde_json::to_string(&kf).map_err(Error::internal)?;
            write_private(&path, text.as_bytes())?;
        }
        let text = std::fs::read_to_string(&path)?;
        let kf: KeyFile =
            serde_json::from_str(&text).map_err(|_| Error::internal("node.key is malformed"))?;
        let decode = |h: &str| -> Result<[u8; 32]> {
            hex::decode(h)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::internal("node.key is malformed"))
        };
        let signing = SigningKey::from_bytes(&decode(&kf.signing_seed)?);
        let master = SecretKey::from_bytes(decode(&kf.master_key)?);
        let note = NoteKey {
            name: key_name.to_string(),
            public: signing.verifying_key(),
        };
        let pub_path = node_dir.join("node.pub");
        let vkey = note.verifier_key();
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(vkey.as_str()) {
            std::fs::write(&pub_path, &vkey)?;
        }
        Ok(NodeKeys {
            signing,
            master,
            note,
        })
    }
}

/// Read a node's published verifier key (`node.pub`).
pub fn read_verifier_key(node_dir: &Path) -> Result<NoteKey> {
    let text = std::fs::read_to_string(node_dir.join("node.pub"))
        .map_err(|_| Error::Verify("node.pub is missing".into()))?;
    NoteKey::parse(&text).map_err(|_| Error::Verify("node.pub is malformed".into()))
}

/// A temp path next to `path`, unique per process and thread, so concurrent
/// writers never share one.
fn unique_sibling(path: &Path, tag: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(['(', ')'], "");
    path.with_extension(format!("{tag}.{}.{thread}", std::process::id()))
}

/// Create `path` (mode 0600) with `bytes` unless it exists. Written to a
/// private temp file first and linked into place, so a concurrent opener
/// either wins the race or reads the winner's complete file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = unique_sibling(path, "new");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Write `bytes` to `path` atomically and durably (temp file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = unique_sibling(path, "tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Run `f` again while SQLite reports the database busy or locked (up to
/// about ten seconds), for the lock upgrades that skip the busy handler.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut delay = std::time::Duration::from_millis(2);
    for _ in 0..12 {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
    f()
}

/// A data holder's approval of a module for a scene on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UdfApproval {
    pub scene: String,
    pub digest: String,
    /// The module's manifest JSON as checked at registration.
    pub manifest: String,
    pub approved_by: String,
    pub approved_at: String,
    pub audit_seq: u64,
}

/// A requester organisation's spending under one scene, as the ledger
/// holds it (all its researchers, every charge this node has accepted:
/// its own queries' and the ones its peer nodes replicated to it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spent {
    pub org: String,
    pub scene: String,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    /// Queries charged (repeats answered from the release cache are not).
    pub queries: u64,
    /// What the organisation has spent under all scenes together.
    pub org_epsilon_spent: f64,
}

/// One charge to the DP ledger: who pays, under which scene, how much, and
/// the caps it must stay within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    /// The requester organisation that pays.
    pub org: String,
    pub scene: String,
    /// The researcher whose query it is (recorded, not a budget key).
    pub actor: String,
    pub epsilon: f64,
    pub delta: f64,
}

/// The ledger counts ε in units of 10⁻⁹, so charges add up exactly.
pub const NANO: f64 = 1e9;

/// The limits one DP charge must stay within (ε).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    /// The organisation's spending under the scene.
    pub scene: f64,
    /// The organisation's spending under all scenes.
    pub org: f64,
    /// The researcher's own spending under the scene (a contract's cap).
    pub actor: Option<f64>,
}

/// What the ledger holds for one charge's organisation, scene and
/// researcher, in units of 10⁻⁹ ε.
struct Ledger {
    scene: i64,
    delta: f64,
    queries: i64,
    org: i64,
    actor: i64,
}

impl Ledger {
    fn read(conn: &Connection, c: &Charge) -> Result<Ledger> {
        let (scene, delta, queries): (i64, f64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(spent_nano), 0), COALESCE(SUM(delta_spent), 0.0),
                    COALESCE(SUM(queries), 0)
             FROM dp_ledger WHERE org = ?1 AND scene = ?2",
            params![c.org, c.scene],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let org: i64 = conn.query_row(
            "SELECT COALESCE(SUM(spent_nano), 0) FROM dp_ledger WHERE org = ?1",
            params![c.org],
            |r| r.get(0),
        )?;
        let actor: i64 = conn.query_row(
            "SELECT COALESCE(SUM(spent_nano), 0) FROM dp_ledger
             WHERE org = ?1 AND scene = ?2 AND actor = ?3",
            params![c.org, c.scene, c.actor],
            |r| r.get(0),
        )?;
        Ok(Ledger {
            scene,
            delta,
            queries,
            org,
            actor,
        })
    }

    /// The charge in units of 10⁻⁹ ε when it fits every cap. Charges round
    /// up and caps round down: the ledger never grants more than the
    /// policy allows.
    fn fits(&self, c: &Charge, caps: &Caps) -> Option<i64> {
        if !(c.epsilon.is_finite() && c.epsilon > 0.0) {
            return None;
        }
        let charge = (c.epsilon * NANO).ceil() as i64;
        let within = |spent: i64, cap: f64| {
            spent
                .checked_add(charge)
                .is_some_and(|a| a <= (cap * NANO).floor() as i64)
        };
        (within(self.scene, caps.scene)
            && within(self.org, caps.org)
            && caps.actor.is_none_or(|cap| within(self.actor, cap)))
        .then_some(charge)
    }
}

/// The node's state database and audit log.
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    head_path: PathBuf,
    origin: String,
}

impl Store {
    pub fn open(node_dir: &Path, origin: &str) -> Result<Store> {
        std::fs::create_dir_all(node_dir)?;
        let conn = Connection::open(node_dir.join("kexin.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // Switching a new database to WAL takes an exclusive lock, and SQLite
        // answers SQLITE_BUSY without waiting when another opener races it.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // IMMEDIATE takes the write lock up front, so the busy timeout applies.
        retry_busy(|| {
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS audit (
                     seq   INTEGER PRIMARY KEY,
                     entry BLOB NOT NULL,
                     leaf  BLOB NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS checkpoint (
                     size INTEGER PRIMARY KEY,
                     note TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS witnessed (
                     origin   TEXT PRIMARY KEY,
                     verifier TEXT NOT NULL,
                     size     INTEGER NOT NULL,
                     note     TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS udf_approval (
                     scene       TEXT NOT NULL,
                     digest      TEXT NOT NULL,
                     manifest    TEXT NOT NULL,
                     approved_by TEXT NOT NULL,
                     approved_at TEXT NOT NULL,
                     audit_seq   INTEGER NOT NULL,
                     PRIMARY KEY (scene, digest)
                 );
                 CREATE TABLE IF NOT EXISTS udf_submission (
                     scene        TEXT NOT NULL,
                     digest       TEXT NOT NULL,
                     manifest     TEXT NOT NULL,
                     submitted_by TEXT NOT NULL,
                     submitted_at TEXT NOT NULL,
                     audit_seq    INTEGER NOT NULL,
                     PRIMARY KEY (scene, digest)
                 );
                 CREATE TABLE IF NOT EXISTS dp_ledger (
                     org         TEXT NOT NULL,
                     scene       TEXT NOT NULL,
                     actor       TEXT NOT NULL,
                     spent_nano  INTEGER NOT NULL,
                     delta_spent REAL NOT NULL,
                     queries     INTEGER NOT NULL,
                     PRIMARY KEY (org, scene, actor)
                 );
                 CREATE TABLE IF NOT EXISTS request_nonce (
                     member TEXT NOT NULL,
                     nonce  TEXT NOT NULL,
                     time   INTEGER NOT NULL,
                     PRIMARY KEY (member, nonce)
                 );
                 CREATE TABLE IF NOT EXISTS contract (
                     id           TEXT PRIMARY KEY,
                     terms        TEXT NOT NULL,
                     state        TEXT NOT NULL,
                     actions      TEXT NOT NULL,
                     queries_used INTEGER NOT NULL,
                     updated_at   TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS airlock (
                     id         INTEGER PRIMARY KEY,
                     scene      TEXT NOT NULL,
                     actor      TEXT NOT NULL,
                     contract   TEXT,
                     result     TEXT NOT NULL,
                     digest     TEXT NOT NULL,
                     state      TEXT NOT NULL,
                     approvals  TEXT NOT NULL,
                     held_seq   INTEGER NOT NULL,
                     created_at TEXT NOT NULL,
                     decided_at TEXT
                 );
                 CREATE TABLE IF NOT EXISTS dp_release (
                     actor     TEXT NOT NULL,
                     scene     TEXT NOT NULL,
                     digest    TEXT NOT NULL,
                     result    TEXT NOT NULL,
                     audit_seq INTEGER NOT NULL,
                     PRIMARY KEY (actor, scene, digest)
                 );
                 CREATE TABLE IF NOT EXISTS contribution (
                     id           INTEGER PRIMARY KEY,
                     scene        TEXT NOT NULL,
                     person       TEXT NOT NULL,
                     report       TEXT NOT NULL,
                     public_share BLOB NOT NULL,
                     input_share  BLOB NOT NULL,
                     audit_seq    INTEGER NOT NULL,
                     batch        TEXT
                 );
                 CREATE INDEX IF NOT EXISTS contribution_open
                     ON contribution (scene, batch, person);
                 CREATE TABLE IF NOT EXISTS person_index (
                     digest  BLOB PRIMARY KEY,
                     ordinal INTEGER NOT NULL UNIQUE
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS person_binding (
                     person    TEXT NOT NULL,
                     scheme    TEXT NOT NULL,
                     digest    BLOB NOT NULL,
                     bound_by  TEXT NOT NULL,
                     binding   TEXT NOT NULL,
                     audit_seq INTEGER NOT NULL,
                     PRIMARY KEY (scheme, digest)
                 );
                 CREATE INDEX IF NOT EXISTS person_binding_person ON person_binding (person);
                 CREATE TABLE IF NOT EXISTS dataset_load (
                     dataset   TEXT PRIMARY KEY,
                     record    TEXT NOT NULL,
                     audit_seq INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS dispute (
                     id                INTEGER PRIMARY KEY,
                     seq               INTEGER NOT NULL,
                     entry             TEXT NOT NULL,
                     contract          TEXT,
                     opening           TEXT NOT NULL,
                     resolution        TEXT,
                     state             TEXT NOT NULL,
                     open_audit_seq    INTEGER NOT NULL,
                     resolve_audit_seq INTEGER
                 );
                 CREATE INDEX IF NOT EXISTS dispute_seq ON dispute (seq);
                 CREATE TABLE IF NOT EXISTS release_contribution (
                     seq           INTEGER PRIMARY KEY,
                     persons       INTEGER,
                     rows          INTEGER NOT NULL,
                     joint_persons INTEGER,
                     salt          BLOB NOT NULL
                 );
                 COMMIT;",
            )
        })?;
        Ok(Store {
            conn,
            head_path: node_dir.join("audit.head"),
            origin: origin.to_string(),
        })
    }

    /// Append an entry (its `seq` is assigned here) and sign the new tree
    /// head, in one durable transaction; then update the head file.
    /// Returns the sequence number and the signed checkpoint.
    pub fn append(&mut self, entry: AuditEntry, keys: &NodeKeys) -> Result<(u64, String)> {
        self.append_with(entry, keys, |_, _| Ok(()))
    }

    /// [`Store::append`], running `also` (given the transaction and the new
    /// sequence number) in the same transaction: the state change and its
    /// audit record commit together or not at all.
    pub fn append_with(
        &mut self,
        entry: AuditEntry,
        keys: &NodeKeys,
        also: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<()>,
    ) -> Result<(u64, String)> {
        let (seqs, note) = self.commit_entries(vec![entry], keys, |tx, seqs| also(tx, seqs[0]))?;
        Ok((seqs[0], note))
    }

    /// Record a signed request's nonce, durably; a nonce seen before is a
    /// replay. Nonces older than twice the freshness window are dropped:
    /// requests that old are refused as stale anyway.
    pub fn take_nonce(&mut self, member: &str, nonce: &str, time: &str) -> Result<()> {
        let t = crate::clock::parse_time(time).ok_or_else(|| {
            Error::refused(crate::Code::Auth, "the request's timestamp is malformed")
        })?;
        if nonce.len() < 16 || nonce.len() > 128 {
            return Err(Error::refused(
                crate::Code::Auth,
                "the request's nonce is malformed",
            ));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM request_nonce WHERE time < ?1",
            params![t - 2 * crate::clock::FRESHNESS_SECONDS],
        )?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO request_nonce (member, nonce, time) VALUES (?1, ?2, ?3)",
            params![member, nonce, t],
        )?;
        tx.commit()?;
        if fresh == 0 {
            return Err(Error::refused(
                crate::Code::Auth,
                "the request was already used (replay)",
            ));
        }
        Ok(())
    }

    /// Append several entries in one durable transaction with one signed
    /// checkpoint at the end (bulk imports). `also` gets the transaction and
    /// the entries' sequence numbers, in order.
    pub fn append_many(
        &mut self,
        entries: Vec<AuditEntry>,
        keys: &NodeKeys,
        also: impl FnOnce(&rusqlite::Transaction<'_>, &[u64]) -> Result<()>,
    ) -> Result<Vec<u64>> {
        if entries.is_empty() {
            return Ok(vec![]);
        }
        Ok(self.commit_entries(entries, keys, also)?.0)
    }

    /// The one append path: assign sequence numbers to (non-empty)
    /// `entries`, insert them, sign a checkpoint over the new tree head, run
    /// `also`, commit durably, then move the head file forward. Returns the
    /// sequence numbers and the signed checkpoint.
    fn commit_entries(
        &mut self,
        entries: Vec<AuditEntry>,
        keys: &NodeKeys,
        also: impl FnOnce(&rusqlite::Transaction<'_>, &[u64]) -> Result<()>,
    ) -> Result<(Vec<u64>, String)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut leaves: Vec<Hash> = {
            let mut stmt = tx.prepare("SELECT leaf FROM audit ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for r in rows {
                out.push(
                    r?.try_into()
                        .map_err(|_| Error::internal("stored leaf hash has the wrong length"))?,
                );
            }
            out
        };
        let mut seqs = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let seq = leaves.len() as u64 + 1;
            entry.seq = seq;
            if entry.salt.is_none() {
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).map_err(Error::internal)?;
                entry.salt = Some(hex::encode(salt));
            }
            let bytes = serde_json::to_vec(&entry).map_err(Error::internal)?;
            let leaf = leaf_hash(&bytes);
            leaves.push(leaf);
            tx.execute(
                "INSERT INTO audit (seq, entry, leaf) VALUES (?1, ?2, ?3)",
                params![seq as i64, bytes, leaf.to_vec()],
            )?;
            seqs.push(seq);
        }
        let last = *seqs
            .last()
            .ok_or_else(|| Error::internal("no audit entries to append"))?;
        let note = Checkpoint {
            origin: self.origin.clone(),
            size: last,
            root: tree_root(&leaves),
        }
        .sign(&keys.note.name, &keys.signing);
        tx.execute(
            "INSERT INTO checkpoint (size, note) VALUES (?1, ?2)",
            params![last as i64, note],
        )?;
        also(&tx, &seqs)?;
        tx.commit()?;
        // The head file only moves forward. Appenders in other processes may
        // race here; a head that is briefly behind the log is still a valid
        // witness (verification needs head size <= log size).
        let current = std::fs::read_to_string(&self.head_path)
            .ok()
            .and_then(|h| h.lines().nth(1).and_then(|l| l.parse::<u64>().ok()))
            .unwrap_or(0);
        if last > current {
            write_atomic(&self.head_path, note.as_bytes())?;
        }
        Ok((seqs, note))
    }

    /// UDF modules this node's data holder approved, optionally for one
    /// scene, ordered by scene then time.
    pub fn udf_approvals(&self, scene: Option<&str>) -> Result<Vec<UdfApproval>> {
        let mut stmt = self.conn.prepare(
            "SELECT scene, digest, manifest, approved_by, approved_at, audit_seq
             FROM udf_approval WHERE ?1 IS NULL OR scene = ?1
             ORDER BY scene, approved_at, digest",
        )?;
        let rows = stmt.query_map(params![scene], |r| {
            Ok(UdfApproval {
                scene: r.get(0)?,
                digest: r.get(1)?,
                manifest: r.get(2)?,
                approved_by: r.get(3)?,
                approved_at: r.get(4)?,
                audit_seq: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Charge `c` in one durable transaction, unless that would take any
    /// of `caps` past its limit. Returns the ledger after the charge, or
    /// `None` (nothing charged) when a cap cannot cover it. The ledger only
    /// grows.
    pub fn dp_charge(&mut self, c: &Charge, caps: &Caps) -> Result<Option<Spent>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = Ledger::read(&tx, c)?;
        let Some(charge) = now.fits(c, caps) else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO dp_ledger (org, scene, actor, spent_nano, delta_spent, queries)
             VALUES (?1, ?2, ?3, ?4, ?5, 1)
             ON CONFLICT (org, scene, actor) DO UPDATE SET
                 spent_nano = spent_nano + excluded.spent_nano,
                 delta_spent = delta_spent + excluded.delta_spent,
                 queries = queries + 1",
            params![c.org, c.scene, c.actor, charge, c.delta],
        )?;
        tx.commit()?;
        Ok(Some(Spent {
            org: c.org.clone(),
            scene: c.scene.clone(),
            epsilon_spent: (now.scene + charge) as f64 / NANO,
            delta_spent: now.delta + c.delta,
            queries: (now.queries + 1) as u64,
            org_epsilon_spent: (now.org + charge) as f64 / NANO,
        }))
    }

    /// Would `c` fit `caps` now? (Read only: the early answer that spares
    /// peers a charge that cannot be made here.)
    pub fn dp_fits(&self, c: &Charge, caps: &Caps) -> Result<bool> {
        Ok(Ledger::read(&self.conn, c)?.fits(c, caps).is_some())
    }

    /// The ledger per organisation and scene, optionally for one
    /// organisation and/or scene.
    pub fn dp_spent(&self, org: Option<&str>, scene: Option<&str>) -> Result<Vec<Spent>> {
        let mut stmt = self.conn.prepare(
            "SELECT l.org, l.scene, SUM(l.spent_nano), SUM(l.delta_spent), SUM(l.queries),
                    (SELECT SUM(spent_nano) FROM dp_ledger o WHERE o.org = l.org)
             FROM dp_ledger l
             WHERE (?1 IS NULL OR l.org = ?1) AND (?2 IS NULL OR l.scene = ?2)
             GROUP BY l.org, l.scene
             ORDER BY l.org, l.scene",
        )?;
        let rows = stmt.query_map(params![org, scene], |r| {
            Ok(Spent {
                org: r.get(0)?,
                scene: r.get(1)?,
                epsilon_spent: r.get::<_, i64>(2)? as f64 / NANO,
                delta_spent: r.get(3)?,
                queries: r.get::<_, i64>(4)? as u64,
                org_epsilon_spent: r.get::<_, i64>(5)? as f64 / NANO,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// What organisation `org` has spent under all scenes together.
    pub fn dp_org_spent(&self, org: &str) -> Result<f64> {
        let nano: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(spent_nano), 0) FROM dp_ledger WHERE org = ?1",
            params![org],
            |r| r.get(0),
        )?;
        Ok(nano as f64 / NANO)
    }

    /// The stored answer to an earlier query with the same normalized plan
    /// digest, and the audit entry that released it.
    pub fn dp_release(
        &self,
        actor: &str,
        scene: &str,
        digest: &str,
    ) -> Result<Option<(String, u64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT result, audit_seq FROM dp_release
                 WHERE actor = ?1 AND scene = ?2 AND digest = ?3",
                params![actor, scene, digest],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// The evidence that entry `seq` is in the log: its bytes, its leaf's
    /// audit path to the root of the latest signed checkpoint, and that
    /// checkpoint. `None` when there is no such entry.
    pub fn proof(&self, seq: u64) -> Result<Option<AuditProof>> {
        self.proof_at(seq, None)
    }

    /// [`Self::proof`] under the signed checkpoint of tree size `size` (the
    /// latest when `None`): the one a witness countersigned. `None` when
    /// there is no such entry or checkpoint.
    pub fn proof_at(&self, seq: u64, size: Option<u64>) -> Result<Option<AuditProof>> {
        let latest: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT size, note FROM checkpoint WHERE ?1 IS NULL OR size = ?1
                 ORDER BY size DESC LIMIT 1",
                params![size.map(|s| s as i64)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((size, checkpoint)) = latest else {
            return Ok(None);
        };
        if seq == 0 || seq > size as u64 {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT seq, entry, leaf FROM audit WHERE seq <= ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![size], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let (mut leaves, mut entry) = (Vec::new(), Vec::new());
        for row in rows {
            let (s, bytes, leaf) = row?;
            let leaf: Hash = leaf
                .try_into()
                .map_err(|_| Error::internal("stored leaf hash has the wrong length"))?;
            leaves.push(leaf);
            if s as u64 == seq {
                entry = bytes;
            }
        }
        let index = (seq - 1) as usize;
        Ok(Some(AuditProof {
            seq,
            size: size as u64,
            entry: Some(String::from_utf8(entry).map_err(Error::internal)?),
            leaf: hex::encode(leaves[index]),
            path: inclusion_proof(&leaves, index)
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint,
        }))
    }

    /// Entry `seq`, if the log has it.
    pub fn entry(&self, seq: u64) -> Result<Option<AuditEntry>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT entry FROM audit WHERE seq = ?1",
                params![seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|_| Error::Verify("an audit entry does not parse".into()))
            })
            .transpose()
    }

    /// The disputes over entry `seq`: (dispute id, state), oldest first.
    pub fn disputes_over(&self, seq: u64) -> Result<Vec<(u64, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, state FROM dispute WHERE seq = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![seq as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The node's private contribution records, by audit sequence.
    pub fn contributions(&self) -> Result<BTreeMap<u64, Contributed>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, persons, rows, joint_persons, salt FROM release_contribution")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (seq, persons, rows, joint, salt) = row?;
            let salt: [u8; 32] = salt
                .try_into()
                .map_err(|_| Error::internal("a contribution salt is malformed"))?;
            out.insert(
                seq as u64,
                Contributed {
                    persons: persons.map(|p| p as u64),
                    rows: rows as u64,
                    joint_persons: joint.map(|j| j as u64),
                    salt,
                },
            );
        }
        Ok(out)
    }

    /// All entries in order.
    pub fn entries(&self) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare("SELECT entry FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(
                serde_json::from_slice(&r?)
                    .map_err(|_| Error::Verify("an audit entry does not parse".into()))?,
            );
        }
        Ok(out)
    }
}

/// The evidence that one entry is in a node's log (RFC 9162 inclusion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof {
    pub seq: u64,
    /// The tree size of `checkpoint`.
    pub size: u64,
    /// The entry's JSON, where the asker may see it.
    pub entry: Option<String>,
    /// The entry's leaf hash (hex).
    pub leaf: String,
    /// The audit path from the leaf to the checkpoint's root (hex).
    pub path: Vec<String>,
    /// The signed checkpoint (C2SP signed note).
    pub checkpoint: String,
}

impl AuditProof {
    /// Check the proof against the node's verifier key: the checkpoint is
    /// signed by it, the path leads from the leaf to its root, and the
    /// entry (if shown) hashes to the leaf.
    pub fn check(&self, key: &NoteKey) -> Result<()> {
        let bad = |why: &str| Err(Error::Verify(format!("audit proof: {why}")));
        let cp = Checkpoint::open(&self.checkpoint, key)?;
        if cp.size != self.size {
            return bad("the checkpoint is for another tree size");
        }
        let hash = |h: &str| -> Option<Hash> { hex::decode(h).ok()?.try_into().ok() };
        let Some(leaf) = hash(&self.leaf) else {
            return bad("the leaf hash is malformed");
        };
        if self
            .entry
            .as_ref()
            .is_some_and(|e| leaf_hash(e.as_bytes()) != leaf)
        {
            return bad("the entry does not hash to the leaf");
        }
        let Some(path) = self
            .path
            .iter()
            .map(|h| hash(h))
            .collect::<Option<Vec<_>>>()
        else {
            return bad("a path hash is malformed");
        };
        if self.seq == 0
            || root_from_inclusion(&leaf, self.seq - 1, self.size, &path) != Some(cp.root)
        {
            return bad("the path does not lead to the checkpoint's root");
        }
        Ok(())
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub root_hex: String,
}

/// Recompute the whole log of a node: leaf hashes, sequence, every signed
/// checkpoint, the head file, and optionally a checkpoint kept by a third
/// party. Any edit, deletion, reordering, unsigned append or rollback fails.
pub fn verify(node_dir: &Path, external_checkpoint: Option<&str>) -> Result<VerifyReport> {
    let external: Vec<(String, String)> = external_checkpoint
        .map(|n| ("external checkpoint".to_string(), n.to_string()))
        .into_iter()
        .collect();
    verify_with(node_dir, &external)
}

/// [`verify`] against any number of checkpoints kept elsewhere, each with
/// a label for the report (`external checkpoint`, `checkpoint witnessed by
/// h2`): every one must be a prefix of the log, so a log truncated or
/// rolled back below what a witness saw fails.
pub fn verify_with(node_dir: &Path, external: &[(String, String)]) -> Result<VerifyReport> {
    let key = read_verifier_key(node_dir)?;
    let db = node_dir.join("kexin.db");
    if !db.exists() {
        return Err(Error::Verify("the node has no state database".into()));
    }
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let fail = |s: String| Err(Error::Verify(s));

    let mut leaves: Vec<Hash> = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT seq, entry, leaf FROM audit ORDER BY seq")?;
        // Read TEXT and BLOB alike: a tampered row may have changed type.
        let bytes = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<Vec<u8>> {
            Ok(r.get_ref(i)?
                .as_bytes_or_null()?
                .unwrap_or_default()
                .to_vec())
        };
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, bytes(r, 1)?, bytes(r, 2)?))
        })?;
        for row in rows {
            let (seq, entry, leaf) = row?;
            let expect = leaves.len() as i64 + 1;
            if seq != expect {
                return fail(format!("entry {expect} is missing (found {seq})"));
            }
            let parsed: AuditEntry = serde_json::from_slice(&entry)
                .map_err(|_| Error::Verify(format!("entry {seq} does not parse")))?;
            if parsed.seq as i64 != seq {
                return fail(format!("entry {seq} is out of order"));
            }
            let h = leaf_hash(&entry);
            if leaf.as_slice() != h {
                return fail(format!("entry {seq} was edited (leaf hash mismatch)"));
            }
            leaves.push(h);
        }
    }
    let n = leaves.len() as u64;

    let check = |note: &str, what: &str| -> Result<Checkpoint> {
        let cp = Checkpoint::open(note, &key).map_err(|e| Error::Verify(format!("{what}: {e}")))?;
        if cp.size > n {
            return Err(Error::Verify(format!(
                "{what} covers {} entries but the log has {n}: entries were deleted or the database was rolled back",
                cp.size
            )));
        }
        if tree_root(&leaves[..cp.size as usize]) != cp.root {
            return Err(Error::Verify(format!(
                "{what} (size {}) does not match the log: entries were edited, reordered or replaced",
                cp.size
            )));
        }
        Ok(cp)
    };

    let mut count = 0u64;
    let mut latest = 0u64;
    {
        let mut stmt = conn.prepare("SELECT size, note FROM checkpoint ORDER BY size")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (size, note) = row?;
            let cp = check(&note, &format!("checkpoint {size}"))?;
            if cp.size as i64 != size {
                return fail(format!("checkpoint {size} is stored under the wrong size"));
            }
            latest = latest.max(cp.size);
            count += 1;
        }
    }
    if latest != n {
        return fail(format!(
            "the log has {n} entries but the latest signed checkpoint covers {latest}: unsigned entries were appended"
        ));
    }
    for (what, note) in external {
        check(note, what)?;
    }
    match std::fs::read_to_string(node_dir.join("audit.head")) {
        Ok(head) => {
            // `check` refuses a head larger than the log (rollback) and one
            // whose root disagrees with the log's prefix.
            check(&head, "head checkpoint")?;
        }
        Err(_) if n == 0 => {}
        Err(_) => return fail("the head checkpoint file is missing".into()),
    }
    Ok(VerifyReport {
        entries: n,
        checkpoints: count,
        root_hex: hex::encode(tree_root(&leaves)),
    })
}

/// What one result used of a node's data, kept in the node's private
/// accounting under the result's audit sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contributed {
    /// Absent where the path does not count persons exactly (single-node
    /// exact results).
    pub persons: Option<u64>,
    pub rows: u64,
    /// Joint results: the released cells' joint person count, as the
    /// secure sum opened it to every node (`None` for a single node's).
    pub joint_persons: Option<u64>,
    /// The commitment's salt.
    pub salt: [u8; 32],
}

impl Contributed {
    /// This node's share of a fee: the whole of a single node's result, its
    /// persons over the joint persons of a joint one (none when no person
    /// was released).
    pub fn share(&self) -> f64 {
        match self.joint_persons {
            None => 1.0,
            Some(0) => 0.0,
            Some(j) => self.persons.unwrap_or(0).min(j) as f64 / j as f64,
        }
    }

    /// The commitment its audit entry carries.
    pub fn commitment(&self) -> String {
        commitment(&self.salt, self.persons, self.rows, self.joint_persons)
    }
}

/// SHA-256 over a domain tag, the salt and the values: hides the values
/// from whoever reads the entry, binds the node to them.
pub fn commitment(salt: &[u8; 32], persons: Option<u64>, rows: u64, joint: Option<u64>) -> String {
    // An absent count is a byte no present one starts with.
    let opt = |v: Option<u64>| {
        v.map_or([0xff; 9], |v| {
            let mut b = [0u8; 9];
            b[1..].copy_from_slice(&v.to_le_bytes());
            b
        })
    };
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"kexin/contribution/v1\n");
    h.update(salt);
    h.update(opt(persons));
    h.update(rows.to_le_bytes());
    h.update(opt(joint));
    hex::encode(h.finalize())
}
