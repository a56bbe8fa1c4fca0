//! The node's dispute services ([`crate::dispute`]): opening a dispute over
//! one of this node's audit entries, resolving it, who sees it, and the
//! pause of a contract that asks for one.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::contract::Contract;
use crate::dispute::{self, Dispute, Opening, Outcome, Resolution};
use crate::error::{Code, Error, Result, refuse};
use crate::identity::{Role, Signed, tag};
use crate::node::Node;
use crate::registry::Registry;

const COLUMNS: &str =
    "id, seq, entry, opening, resolution, state, open_audit_seq, resolve_audit_seq";

impl Node {
    /// A party to entry `seq` opens a dispute over it. Refusals are
    /// audited too.
    pub fn dispute_open(&self, env: &Signed<Opening>) -> Result<Dispute> {
        let o = &env.body;
        let entry = self.store_lock()?.entry(o.seq)?;
        let scene = entry.as_ref().map(|e| e.scene.clone()).unwrap_or_default();
        let r = self.open_checked(env, entry);
        self.audit_refusal(r, &o.member, &scene, Kind::DisputeOpen, None)
    }

    fn open_checked(&self, env: &Signed<Opening>, entry: Option<AuditEntry>) -> Result<Dispute> {
        let o = &env.body;
        if o.space != self.space.name || o.node != self.name {
            return refuse(Code::Dispute, "the dispute is for another space or node");
        }
        let Some(entry) = entry else {
            return refuse(Code::Dispute, "no such audit entry on this node");
        };
        if !dispute::text_ok(&o.reason) {
            return refuse(
                Code::Dispute,
                "the reason must be plain text of 1 to 2000 characters",
            );
        }
        if !self.party(&o.member, &entry)? {
            return refuse(
                Code::Dispute,
                "only a party to the entry (its actor, a data holder of the node, the operator, or a person whose records it used) opens a dispute over it",
            );
        }
        self.check_signed(
            env,
            tag::DISPUTE,
            &o.member,
            &o.nonce,
            &o.time,
            Code::Dispute,
        )?;
        let mut e =
            self.governance_entry(&o.member, &entry.scene, Kind::DisputeOpen, Decision::Opened);
        e.contract = entry.contract.clone();
        e.concerns = Some(entry.seq);
        let signed = serde_json::to_string(env).map_err(Error::internal)?;
        let entry_json = serde_json::to_string(&entry).map_err(Error::internal)?;
        let mut id = 0;
        self.store_lock()?.append_with(e, &self.keys, |tx, seq| {
            let open: Option<i64> = tx
                .query_row(
                    "SELECT id FROM dispute WHERE seq = ?1 AND state = 'open'
                     AND json_extract(opening, '$.body.member') = ?2",
                    params![entry.seq as i64, o.member],
                    |r| r.get(0),
                )
                .optional()?;
            if open.is_some() {
                return refuse(
                    Code::Dispute,
                    "the member already has an open dispute over this entry",
                );
            }
            tx.execute(
                "INSERT INTO dispute (seq, entry, contract, opening, state, open_audit_seq)
                 VALUES (?1, ?2, ?3, ?4, 'open', ?5)",
                params![
                    entry.seq as i64,
                    entry_json,
                    entry.contract,
                    signed,
                    seq as i64
                ],
            )?;
            id = tx.last_insert_rowid() as u64;
            Ok(())
        })?;
        self.dispute(id)
    }

    /// A data holder of the node or the operator upholds or dismisses an
    /// open dispute; the member who opened it may withdraw it. Refusals are
    /// audited too.
    pub fn dispute_resolve(&self, env: &Signed<Resolution>) -> Result<Dispute> {
        let r = &env.body;
        let found = self.dispute(r.dispute);
        let scene = found.as_ref().map(|d| d.scene.clone()).unwrap_or_default();
        let res = self.resolve_checked(env, found);
        self.audit_refusal(res, &r.member, &scene, Kind::DisputeResolve, None)
    }

    fn resolve_checked(&self, env: &Signed<Resolution>, found: Result<Dispute>) -> Result<Dispute> {
        let r = &env.body;
        if r.space != self.space.name || r.node != self.name {
            return refuse(Code::Dispute, "the resolution is for another space or node");
        }
        let d = found?;
        if !d.is_open() {
            return refuse(Code::Dispute, "the dispute is already resolved");
        }
        let allowed = match r.outcome {
            Outcome::Withdrawn => r.member == d.opened_by,
            Outcome::Upheld | Outcome::Dismissed => {
                self.holder_here(&r.member) || self.operator(&r.member)
            }
        };
        if !allowed {
            return refuse(
                Code::Dispute,
                "a data holder of the node or the operator upholds or dismisses a dispute; only its opener withdraws it",
            );
        }
        if !dispute::text_ok(&r.note) {
            return refuse(
                Code::Dispute,
                "the note must be plain text of 1 to 2000 characters",
            );
        }
        self.check_signed(
            env,
            tag::DISPUTE,
            &r.member,
            &r.nonce,
            &r.time,
            Code::Dispute,
        )?;
        let mut e = self.governance_entry(
            &r.member,
            &d.scene,
            Kind::DisputeResolve,
            match r.outcome {
                Outcome::Upheld => Decision::Upheld,
                Outcome::Dismissed => Decision::Dismissed,
                Outcome::Withdrawn => Decision::Withdrawn,
            },
        );
        e.contract = d.contract.clone();
        e.concerns = Some(d.seq);
        let signed = serde_json::to_string(env).map_err(Error::internal)?;
        self.store_lock()?.append_with(e, &self.keys, |tx, seq| {
            let changed = tx.execute(
                "UPDATE dispute SET state = ?2, resolution = ?3, resolve_audit_seq = ?4
                 WHERE id = ?1 AND state = 'open'",
                params![d.id as i64, r.outcome.as_str(), signed, seq as i64],
            )?;
            if changed == 0 {
                return refuse(Code::Dispute, "the dispute was resolved meanwhile");
            }
            Ok(())
        })?;
        self.dispute(d.id)
    }

    /// Whether `member` is a party to `entry`: its actor, a data holder of
    /// this node, the operator, or an individual whose history (the
    /// consent registry's account of which queries used their records)
    /// holds the entry.
    fn party(&self, member: &str, entry: &AuditEntry) -> Result<bool> {
        if entry.actor == member || self.holder_here(member) || self.operator(member) {
            return Ok(true);
        }
        self.used_records_of(member, &[entry.seq])
            .map(|used| !used.is_empty())
    }

    /// Of `seqs`, the entries of this node that used individual `member`'s
    /// records (none for members who are not individuals).
    fn used_records_of(&self, member: &str, seqs: &[u64]) -> Result<Vec<u64>> {
        // Individuals are certified in the registry, not listed in
        // space.toml.
        let individual = crate::registry::View::open(&self.space)
            .and_then(|v| v.member_key(member))
            .is_ok_and(|(_, cert)| cert.body.role == Role::Individual);
        if !individual || seqs.is_empty() {
            return Ok(vec![]);
        }
        let uses = Registry::open(Arc::clone(&self.space))?.history(member)?;
        Ok(seqs
            .iter()
            .copied()
            .filter(|s| {
                uses.iter()
                    .any(|u| u.node == self.name && u.audit_seq == *s)
            })
            .collect())
    }

    /// One dispute on this node.
    pub fn dispute(&self, id: u64) -> Result<Dispute> {
        self.read_disputes(Some(id))?
            .pop()
            .ok_or_else(|| Error::refused(Code::Dispute, "no such dispute on this node"))
    }

    /// Every dispute on this node, oldest first.
    pub fn disputes(&self) -> Result<Vec<Dispute>> {
        self.read_disputes(None)
    }

    /// The disputes `member` may see: all of them for a data holder of this
    /// node and the operator; for anyone else those over entries they are a
    /// party to, and those they opened.
    pub fn disputes_for(&self, member: &str) -> Result<Vec<Dispute>> {
        let all = self.disputes()?;
        if self.holder_here(member) || self.operator(member) {
            return Ok(all);
        }
        let seqs: Vec<u64> = all.iter().map(|d| d.seq).collect();
        let used = self.used_records_of(member, &seqs)?;
        Ok(all
            .into_iter()
            .filter(|d| d.actor == member || d.opened_by == member || used.contains(&d.seq))
            .collect())
    }

    /// A contract with `pause_on_dispute` runs no query while a dispute over
    /// one of its entries is open.
    pub(crate) fn check_not_paused(&self, c: &Contract) -> Result<()> {
        if !c.terms.pause_on_dispute {
            return Ok(());
        }
        let open: Option<i64> = self
            .store_lock()?
            .conn
            .query_row(
                "SELECT id FROM dispute WHERE contract = ?1 AND state = 'open' LIMIT 1",
                params![c.id],
                |r| r.get(0),
            )
            .optional()?;
        if open.is_some() {
            return refuse(
                Code::Contract,
                "the contract is paused while a dispute over one of its entries is open",
            );
        }
        Ok(())
    }

    fn read_disputes(&self, id: Option<u64>) -> Result<Vec<Dispute>> {
        let store = self.store_lock()?;
        let sql = format!("SELECT {COLUMNS} FROM dispute WHERE ?1 IS NULL OR id = ?1 ORDER BY id");
        let mut stmt = store.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![id.map(|i| i as i64)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, seq, entry, opening, resolution, state, open_seq, resolve_seq) = row?;
            let entry: AuditEntry = serde_json::from_str(&entry).map_err(Error::internal)?;
            let opening: Signed<Opening> =
                serde_json::from_str(&opening).map_err(Error::internal)?;
            let resolution: Option<Signed<Resolution>> = resolution
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(Error::internal)?;
            let mut signatures = vec![serde_json::to_value(&opening).map_err(Error::internal)?];
            if let Some(r) = &resolution {
                signatures.push(serde_json::to_value(r).map_err(Error::internal)?);
            }
            out.push(Dispute {
                id: id as u64,
                node: self.name.clone(),
                seq: seq as u64,
                scene: entry.scene,
                kind: entry.kind,
                actor: entry.actor,
                contract: entry.contract,
                opened_by: opening.body.member.clone(),
                reason: opening.body.reason.clone(),
                opened_at: opening.body.time.clone(),
                open_audit_seq: open_seq as u64,
                state,
                resolved_by: resolution.as_ref().map(|r| r.body.member.clone()),
                note: resolution.as_ref().map(|r| r.body.note.clone()),
                resolved_at: resolution.as_ref().map(|r| r.body.time.clone()),
                resolve_audit_seq: resolve_seq.map(|s| s as u64),
                signatures,
            });
        }
        Ok(out)
    }
}
