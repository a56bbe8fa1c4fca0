//! The space's registry: the certificates the operator issued and every
//! consent receipt, in one SQLite database with its own audit log
//! (`<space>/registry/`).
//!
//! Layout of the registry directory:
//! - `kexin.db` — `identity` (one current certificate per member), `consent`
//!   (every receipt, in commit order), and the registry's audit log
//! - `node.key`, `node.pub`, `audit.head` — as for a node: the log's signer
//! - `id.key` — the space's key for ID-number digests (mode 0600); nodes
//!   read it to match their person keys against consenting persons
//!
//! Nodes only ever open the database read-only ([`View`]); a scene with
//! `consent = "required"` refuses to run when it cannot be read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::consent::{self, ConsentReceipt, ConsentRecord, ConsentSet, MODIFIERS, Purpose, Verb};
use crate::error::{Code, Error, Result, refuse};
use crate::identity::{self, Certificate, Role, Signed, tag};
use crate::keys::SecretKey;
use crate::policy::{Scene, Space};
use crate::store::{NodeKeys, Store, now_utc};

/// The registry directory of a space.
pub fn dir(space_dir: &Path) -> PathBuf {
    space_dir.join("registry")
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS identity (
        member     TEXT PRIMARY KEY,
        role       TEXT NOT NULL,
        org        TEXT NOT NULL,
        public_key TEXT NOT NULL,
        id_digest  TEXT UNIQUE,
        cert       TEXT NOT NULL,
        issued_at  TEXT NOT NULL,
        audit_seq  INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS consent (
        seq         INTEGER PRIMARY KEY,
        person      TEXT NOT NULL,
        scene       TEXT NOT NULL,
        action      TEXT NOT NULL,
        purpose     TEXT NOT NULL,
        modifiers   TEXT NOT NULL,
        requester   TEXT NOT NULL,
        until       TEXT,
        nonce       TEXT NOT NULL UNIQUE,
        recorded_at TEXT NOT NULL,
        audit_seq   INTEGER NOT NULL,
        receipt     TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS consent_scene ON consent (scene, seq);
";

/// The registry, open for writing (the operator's and individuals' tools).
#[derive(Debug)]
pub struct Registry {
    space: Arc<Space>,
    store: Store,
    keys: NodeKeys,
    id_key: SecretKey,
}

/// One member as the registry lists them.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub member: String,
    pub role: Role,
    pub org: String,
    pub public_key: String,
    pub id_bound: bool,
    pub issued_at: String,
    pub audit_seq: u64,
}

/// One audited use of a person's records, as `kexin consent history` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Use {
    pub node: String,
    pub audit_seq: u64,
    pub time: String,
    pub scene: String,
    pub purpose: String,
    /// The purpose as the scene states it to data subjects (处理目的).
    pub purpose_zh: Option<String>,
    pub requester: String,
    pub contract: Option<String>,
    /// `released` or `held`.
    pub decision: Decision,
    pub sql_sha256: Option<String>,
    /// Disputes opened over this use (`kexin dispute list`), with their
    /// state: a person sees that one was raised and how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disputes: Vec<crate::dispute::Mark>,
}

/// The space's key for person digests (`<space>/registry/id.key`),
/// created when `create` is set and there is none yet (a node loads its
/// data before the operator has issued anything).
pub fn id_key(space_dir: &Path, create: bool) -> Result<SecretKey> {
    let dir = dir(space_dir);
    let key_path = dir.join("id.key");
    if create && !key_path.exists() {
        std::fs::create_dir_all(&dir)?;
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(Error::internal)?;
        crate::store::write_private(&key_path, hex::encode(k).as_bytes())?;
    }
    load_id_key(&dir)
}

fn load_id_key(dir: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(dir.join("id.key"))
        .map_err(|_| Error::refused(Code::Consent, "the consent registry is unavailable"))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::internal("registry id.key is malformed"))?;
    Ok(SecretKey::from_bytes(bytes))
}

fn entry(space: &Space, actor: &str, scene: &str, kind: Kind, decision: Decision) -> AuditEntry {
    AuditEntry::new(
        "registry",
        actor,
        scene,
        kind,
        decision,
        &space.policy_digest,
    )
}

impl Registry {
    /// Open (creating on first use) the registry of `space`.
    pub fn open(space: Arc<Space>) -> Result<Registry> {
        let dir = dir(&space.dir);
        let origin = format!("kexin/{}/registry", space.name);
        let keys = NodeKeys::load_or_create(&dir, &origin)?;
        let store = Store::open(&dir, &origin)?;
        store.conn.execute_batch(SCHEMA)?;
        let id_key = id_key(&space.dir, true)?;
        Ok(Registry {
            space,
            store,
            keys,
            id_key,
        })
    }

    /// The keyed digest of a validated ID number (what certificates carry).
    pub fn id_digest(&self, id: &identity::IdCardNumber) -> String {
        hex::encode(consent::id_digest(&self.id_key, id.as_str()))
    }

    /// Record a certificate the operator signed. Researchers, holders and
    /// operators must be members of `space.toml` with the same role and
    /// organisation; individuals are registered here only. A new
    /// certificate for a member replaces the old one (key rotation).
    pub fn issue(&mut self, cert: Signed<Certificate>) -> Result<u64> {
        let member = cert.body.member.clone();
        let r = self.issue_many(vec![cert]).map(|s| s[0]);
        self.audit_refusal(r, &member, "", Kind::IdentityIssue)
    }

    /// Record a refused registry action in the registry's audit log.
    fn audit_refusal<T>(
        &mut self,
        result: Result<T>,
        actor: &str,
        scene: &str,
        kind: Kind,
    ) -> Result<T> {
        if let Err(Error::Refused(r)) = &result {
            let mut e = entry(&self.space, actor, scene, kind, Decision::Refused);
            e.code = Some(r.code.as_str().to_string());
            e.rule = Some(r.rule.to_string());
            match self.store.append(e, &self.keys) {
                Ok((seq, _)) => return Err(Error::Refused(r.audited(seq))),
                Err(x) => tracing::error!(target: "kexin::registry", "audit append failed: {x}"),
            }
        }
        result
    }

    /// [`Registry::issue`] for many certificates in one transaction.
    pub fn issue_many(&mut self, certs: Vec<Signed<Certificate>>) -> Result<Vec<u64>> {
        let operator = self
            .space
            .operator_key
            .ok_or_else(|| Error::refused(Code::Auth, "the space has no operator key"))?;
        let today = now_utc().0;
        let mut rows = Vec::with_capacity(certs.len());
        let mut entries = Vec::with_capacity(certs.len());
        for cert in &certs {
            cert.check(&self.space.name, &operator, &today)?;
            let c = &cert.body;
            // Members named in space.toml are certified only with the role
            // and organisation the policy gives them; researchers, holders
            // and operators must be named there; individuals need not be.
            match self.space.members.get(&c.member) {
                Some(m) if m.role != c.role || m.org != c.org => {
                    return refuse(
                        Code::Auth,
                        "the member's role and organisation must match space.toml",
                    );
                }
                None if c.role != Role::Individual => {
                    return refuse(
                        Code::Auth,
                        "researchers, holders and operators must be space.toml members",
                    );
                }
                _ => {}
            }
            let name_ok = !c.member.is_empty()
                && c.member.len() <= 64
                && c.member
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return refuse(Code::Auth, "member names are 1-64 of [A-Za-z0-9_-]");
            }
            rows.push((
                c.clone(),
                serde_json::to_string(cert).map_err(Error::internal)?,
            ));
            entries.push(entry(
                &self.space,
                &c.member,
                "",
                Kind::IdentityIssue,
                Decision::Issued,
            ));
        }
        self.store.append_many(entries, &self.keys, |tx, seqs| {
            for ((c, text), seq) in rows.iter().zip(seqs) {
                tx.execute(
                    "INSERT INTO identity (member, role, org, public_key, id_digest, cert, issued_at, audit_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (member) DO UPDATE SET role = ?2, org = ?3, public_key = ?4,
                       id_digest = ?5, cert = ?6, issued_at = ?7, audit_seq = ?8",
                    params![
                        c.member,
                        c.role.as_str(),
                        c.org,
                        c.public_key,
                        c.id_digest,
                        text,
                        c.issued_at,
                        *seq as i64
                    ],
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Error::refused(Code::Auth, "the ID number is bound to another member")
                    }
                    e => e.into(),
                })?;
            }
            Ok(())
        })
    }

    /// Every issued member.
    pub fn members(&self) -> Result<Vec<Issued>> {
        let mut stmt = self.store.conn.prepare(
            "SELECT member, role, org, public_key, id_digest IS NOT NULL, issued_at, audit_seq
             FROM identity ORDER BY member",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Issued {
                member: r.get(0)?,
                // Written from a checked certificate: a role that does not
                // parse means the database was edited.
                role: Role::parse(&r.get::<_, String>(1)?).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        1,
                        "role".into(),
                        rusqlite::types::Type::Text,
                    )
                })?,
                org: r.get(2)?,
                public_key: r.get(3)?,
                id_bound: r.get(4)?,
                issued_at: r.get(5)?,
                audit_seq: r.get::<_, i64>(6)? as u64,
            })
        })?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    /// Record a signed grant or revocation. Effective from its commit.
    pub fn record_consent(&mut self, receipt: Signed<ConsentReceipt>) -> Result<ConsentRecord> {
        let (person, scene) = (receipt.body.person.clone(), receipt.body.scene.clone());
        let kind = receipt.body.action.audit_kind();
        let r = self
            .record_many(vec![receipt])
            .and_then(|mut v| v.pop().ok_or_else(|| Error::internal("no record")));
        self.audit_refusal(r, &person, &scene, kind)
    }

    fn check_receipt(&self, receipt: &Signed<ConsentReceipt>) -> Result<()> {
        let r = &receipt.body;
        if r.space != self.space.name {
            return refuse(Code::Auth, "the receipt is for another space");
        }
        let (key, cert) = self.view().member_key(&r.person)?;
        receipt.verify(tag::CONSENT, &key, Code::Auth)?;
        identity::fresh(&r.time)?;
        // An individual without a certified ID number may grant too: the
        // grant decides about the rows a data holder bound to them
        // (`kexin id bind`), and about nothing else.
        if cert.body.role != Role::Individual {
            return refuse(Code::Auth, "only individuals can grant or revoke");
        }
        let scene = self
            .space
            .scenes
            .get(&r.scene)
            .ok_or_else(|| Error::refused(Code::Scene, "unknown scene"))?;
        match r.action {
            Verb::Grant => {
                let p = Purpose::parse(&r.purpose, None)
                    .or_else(|_| refuse(Code::Scene, "the purpose is not a DUO code"))?;
                if !p.covers(&scene.purpose_code) {
                    return refuse(Code::Scene, "the granted purpose does not cover the scene");
                }
                if r.requester != scene.requester {
                    return refuse(Code::Scene, "the grant names another requester");
                }
                if r.modifiers.iter().any(|m| !MODIFIERS.contains(&m.as_str())) {
                    return refuse(Code::Scene, "unknown DUO modifier");
                }
                if r.until.as_deref().is_some_and(|u| !identity::valid_date(u)) {
                    return refuse(Code::Scene, "the end date is not YYYY-MM-DD");
                }
                Ok(())
            }
            Verb::Revoke => Ok(()),
        }
    }

    /// [`Registry::record_consent`] for many receipts in one transaction.
    pub fn record_many(
        &mut self,
        receipts: Vec<Signed<ConsentReceipt>>,
    ) -> Result<Vec<ConsentRecord>> {
        let mut entries = Vec::with_capacity(receipts.len());
        let mut texts = Vec::with_capacity(receipts.len());
        for receipt in &receipts {
            self.check_receipt(receipt)?;
            let r = &receipt.body;
            texts.push(serde_json::to_string(receipt).map_err(Error::internal)?);
            entries.push(entry(
                &self.space,
                &r.person,
                &r.scene,
                r.action.audit_kind(),
                Decision::Recorded,
            ));
        }
        let now = now_utc().1;
        let mut out = Vec::with_capacity(receipts.len());
        self.store.append_many(entries, &self.keys, |tx, seqs| {
            for ((receipt, text), seq) in receipts.iter().zip(&texts).zip(seqs) {
                let r = &receipt.body;
                tx.execute(
                    "INSERT INTO consent (person, scene, action, purpose, modifiers, requester, until,
                       nonce, recorded_at, audit_seq, receipt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        r.person,
                        r.scene,
                        r.action,
                        r.purpose,
                        r.modifiers.join(","),
                        r.requester,
                        r.until,
                        r.nonce,
                        now,
                        *seq as i64,
                        text
                    ],
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Error::refused(Code::Auth, "the receipt was already recorded (replay)")
                    }
                    e => e.into(),
                })?;
                out.push(ConsentRecord {
                    seq: tx.last_insert_rowid() as u64,
                    person: r.person.clone(),
                    scene: r.scene.clone(),
                    action: r.action,
                    purpose: r.purpose.clone(),
                    modifiers: r.modifiers.clone(),
                    requester: r.requester.clone(),
                    until: r.until.clone(),
                    recorded_at: now.clone(),
                    audit_seq: *seq,
                    receipt: text.clone(),
                });
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub fn view(&self) -> View<'_> {
        View::from_conn(&self.store.conn, &self.space)
    }

    /// Every audited query on the space's nodes that used `person`'s records:
    /// released or held, under a scene the person's grant covered when the
    /// query read the consent registry.
    pub fn history(&self, person: &str) -> Result<Vec<Use>> {
        let mine = self.view().consents(Some(person), None)?;
        let mut out = Vec::new();
        for node in &self.space.nodes {
            let ndir = self.space.dir.join(node);
            if !ndir.join("kexin.db").is_file() {
                continue;
            }
            let store = Store::open(&ndir, &format!("kexin/{}/{node}", self.space.name))?;
            for e in store.entries()? {
                let (Some(at), Some(decision @ (Decision::Released | Decision::Held))) =
                    (e.consent_seq, Decision::parse(&e.decision))
                else {
                    continue;
                };
                if e.kind != Kind::Query.as_str() {
                    continue;
                }
                let Some(scene) = self.space.scenes.get(&e.scene) else {
                    continue;
                };
                let date = e.time.get(..10).unwrap_or("");
                let seen = mine.iter().filter(|r| r.seq <= at);
                if consent::covered(seen, scene, date).is_empty() {
                    continue;
                }
                out.push(Use {
                    node: node.clone(),
                    audit_seq: e.seq,
                    time: e.time.clone(),
                    scene: e.scene.clone(),
                    purpose: scene.purpose_code.code(),
                    purpose_zh: scene.purpose_zh.clone(),
                    requester: e.actor.clone(),
                    contract: e.contract.clone(),
                    decision,
                    sql_sha256: e.sql_sha256.clone(),
                    disputes: store
                        .disputes_over(e.seq)?
                        .into_iter()
                        .map(|(id, state)| crate::dispute::Mark { id, state })
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| (&a.time, &a.node, a.audit_seq).cmp(&(&b.time, &b.node, b.audit_seq)));
        Ok(out)
    }
}

/// What one consent snapshot reads: the registry's consent sequence, the
/// scene's receipts, and (member, ID digest) of every bound individual.
type Snapshot = (u64, Vec<ConsentRecord>, Vec<(String, String)>);

/// Read access to the registry (nodes open it read-only).
#[derive(Debug)]
pub struct View<'a> {
    conn: ViewConn<'a>,
    space: &'a Space,
}

#[derive(Debug)]
enum ViewConn<'a> {
    Owned(Connection),
    Borrowed(&'a Connection),
}

impl<'a> View<'a> {
    fn from_conn(conn: &'a Connection, space: &'a Space) -> Self {
        View {
            conn: ViewConn::Borrowed(conn),
            space,
        }
    }

    /// Open the registry of `space` read-only. A missing or unreadable
    /// registry is `KX-CONSENT`.
    pub fn open(space: &'a Space) -> Result<View<'a>> {
        let path = dir(&space.dir).join("kexin.db");
        let unavailable = || Error::refused(Code::Consent, "the consent registry is unavailable");
        if !path.is_file() {
            return Err(unavailable());
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|_| unavailable())?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| unavailable())?;
        Ok(View {
            conn: ViewConn::Owned(conn),
            space,
        })
    }

    fn c(&self) -> &Connection {
        match &self.conn {
            ViewConn::Owned(c) => c,
            ViewConn::Borrowed(c) => c,
        }
    }

    /// The member's current certificate, checked against the operator key.
    pub fn member_key(&self, member: &str) -> Result<(VerifyingKey, Signed<Certificate>)> {
        let text: Option<String> = self
            .c()
            .query_row(
                "SELECT cert FROM identity WHERE member = ?1",
                params![member],
                |r| r.get(0),
            )
            .optional()
            .map_err(|_| Error::refused(Code::Auth, "the identity registry is unavailable"))?;
        let Some(text) = text else {
            return refuse(Code::Auth, "no certificate was issued to the member");
        };
        let cert: Signed<Certificate> =
            serde_json::from_str(&text).map_err(|_| Error::internal("stored certificate"))?;
        let operator = self
            .space
            .operator_key
            .ok_or_else(|| Error::refused(Code::Auth, "the space has no operator key"))?;
        let key = cert.check(&self.space.name, &operator, &now_utc().0)?;
        if cert.body.member != member {
            return refuse(Code::Auth, "the certificate names another member");
        }
        Ok((key, cert))
    }

    /// The names of every member issued with role `individual`.
    pub fn individuals(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .c()
            .prepare("SELECT member FROM identity WHERE role = 'individual' ORDER BY member")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    /// Receipts in commit order, optionally for one person and/or scene.
    pub fn consents(
        &self,
        person: Option<&str>,
        scene: Option<&str>,
    ) -> Result<Vec<ConsentRecord>> {
        let mut stmt = self.c().prepare(
            "SELECT seq, person, scene, action, purpose, modifiers, requester, until,
                    recorded_at, audit_seq, receipt
             FROM consent WHERE (?1 IS NULL OR person = ?1) AND (?2 IS NULL OR scene = ?2)
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![person, scene], |r| {
            let mods: String = r.get(5)?;
            Ok(ConsentRecord {
                seq: r.get::<_, i64>(0)? as u64,
                person: r.get(1)?,
                scene: r.get(2)?,
                action: r.get(3)?,
                purpose: r.get(4)?,
                modifiers: mods
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
                requester: r.get(6)?,
                until: r.get(7)?,
                recorded_at: r.get(8)?,
                audit_seq: r.get::<_, i64>(9)? as u64,
                receipt: r.get(10)?,
            })
        })?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    /// What a consent set depends on in the registry: the last consent
    /// receipt's sequence number and the last certificate's audit entry. A
    /// set read at the same version (and date) is the same set.
    pub fn version(&self) -> Result<(u64, u64)> {
        let unavailable = |_| Error::refused(Code::Consent, "the consent registry is unavailable");
        self.c()
            .query_row(
                "SELECT (SELECT coalesce(max(seq), 0) FROM consent),
                        (SELECT coalesce(max(audit_seq), 0) FROM identity)",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(unavailable)
    }

    /// The consent set of `scene` for a query starting on `date`, read in one
    /// transaction: every receipt committed so far, and nothing after.
    pub fn snapshot(&self, scene: &Scene, date: &str) -> Result<ConsentSet> {
        let unavailable = |_| Error::refused(Code::Consent, "the consent registry is unavailable");
        let c = self.c();
        c.execute_batch("BEGIN").map_err(unavailable)?;
        let read = (|| -> Result<Snapshot> {
            let seq: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM consent", [], |r| {
                r.get(0)
            })?;
            let records = self.consents(None, Some(&scene.name))?;
            let mut stmt = c.prepare(
                "SELECT member, id_digest FROM identity
                 WHERE role = 'individual' AND id_digest IS NOT NULL",
            )?;
            let ids = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((seq as u64, records, ids))
        })();
        let _ = c.execute_batch("COMMIT");
        let (seq, records, ids) = read.map_err(|e| {
            tracing::warn!(target: "kexin::registry", "consent snapshot failed: {e}");
            Error::refused(Code::Consent, "the consent registry is unavailable")
        })?;
        let persons: HashSet<&str> = consent::covered(&records, scene, date)
            .into_iter()
            .collect();
        let mut members: Vec<String> = persons.iter().map(|p| p.to_string()).collect();
        members.sort();
        let mut digests = HashSet::new();
        for (member, d) in &ids {
            if persons.contains(member.as_str())
                && let Some(b) = hex::decode(d)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
            {
                digests.insert(b);
            }
        }
        let key = load_id_key(&dir(&self.space.dir))?;
        Ok(ConsentSet::new(digests, key, seq).with_persons(members))
    }
}
