//! The node's side of individuals' contributions (Prio3): accepting a
//! signed report into the open batch, handing the batch to a collection,
//! and auditing the collection. The model (bodies, measurement, noise
//! shares) is [`crate::contribution`].

use kexin_mpc::prio3::Stored;

use super::{Node, refusal};
use crate::audit::{AuditEntry, Decision, Kind};
use crate::contribution::{BatchResult, CollectBody, ContributionBody, decode_b64, vdaf};
use crate::error::{Code, Error, Result};
use crate::identity::{Role, Signed, tag};
use crate::policy::{Contribution, Scene};
use crate::store::now_utc;

impl Node {
    /// The scene, if individuals contribute under it here (this node is one
    /// of its aggregators); with this node's aggregator index.
    pub fn contribution_scene(&self, scene: &str) -> Result<(&Scene, &Contribution, usize)> {
        let sc = self
            .space
            .scenes
            .get(scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        let c = sc
            .contribution
            .as_ref()
            .ok_or_else(|| refusal(Code::Scene, "the scene takes no contributions"))?;
        let i = c
            .aggregators
            .iter()
            .position(|a| a == self.name())
            .ok_or_else(|| refusal(Code::Scene, "this node does not aggregate the scene"))?;
        if !sc.valid_on(&now_utc().0) {
            return Err(refusal(Code::Scene, "the scene is not valid today"));
        }
        Ok((sc, c, i))
    }

    /// Accept a person's signed report into the scene's open batch. Every
    /// decision after the signature checks is audited (kind
    /// `contribution`), without the value or the shares.
    pub fn accept_contribution(&self, env: &Signed<ContributionBody>) -> Result<u64> {
        let b = &env.body;
        if b.space != self.space.name || b.node != self.name() {
            return Err(refusal(
                Code::Auth,
                "the report is bound to another space or node",
            ));
        }
        let view = crate::registry::View::open(&self.space)
            .map_err(|_| refusal(Code::Auth, "the identity registry is unavailable"))?;
        let (key, cert) = view.member_key(&b.person)?;
        env.verify(tag::CONTRIBUTE, &key, Code::Auth)?;
        if cert.body.role != Role::Individual {
            return Err(refusal(Code::Auth, "only individuals contribute"));
        }
        crate::identity::fresh(&b.time)?;
        self.store_lock()?
            .take_nonce(&b.person, &b.nonce, &b.time)?;
        let checked = (|| -> Result<(Stored, usize)> {
            let (sc, c, agg) = self.contribution_scene(&b.scene)?;
            let records = view
                .consents(Some(&b.person), Some(&b.scene))
                .map_err(|_| refusal(Code::Consent, "the consent registry is unavailable"))?;
            if crate::consent::covered(&records, sc, &now_utc().0).is_empty() {
                return Err(refusal(
                    Code::Contribution,
                    "no current grant of the person covers the scene",
                ));
            }
            let nonce: [u8; 16] = hex::decode(&b.report)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| refusal(Code::Contribution, "the report is malformed"))?;
            let stored = Stored {
                nonce,
                public_share: decode_b64(&b.public_share)?,
                input_share: decode_b64(&b.input_share)?,
            };
            vdaf(c)?
                .check_share(agg, &stored)
                .map_err(|_| refusal(Code::Contribution, "the report is malformed"))?;
            Ok((stored, agg))
        })();
        let mut e = AuditEntry::new(
            self.name(),
            &b.person,
            &b.scene,
            Kind::Contribution,
            Decision::Accepted,
            &self.space.policy_digest,
        );
        let (stored, _) = match checked {
            Ok(s) => s,
            Err(err) => {
                if let Some(r) = err.as_refusal_parts() {
                    e.decide(Decision::Refused);
                    e.code = Some(r.0.as_str().into());
                    e.rule = Some(r.1.into());
                    self.store_lock()?.append(e, &self.keys)?;
                }
                return Err(err);
            }
        };
        let mut store = self.store_lock()?;
        let open: i64 = store.conn.query_row(
            "SELECT count(*) FROM contribution WHERE scene = ?1 AND person = ?2 AND batch IS NULL",
            rusqlite::params![b.scene, b.person],
            |r| r.get(0),
        )?;
        if open > 0 {
            e.decide(Decision::Refused);
            e.code = Some(Code::Contribution.as_str().into());
            e.rule = Some("the person already contributed to the open batch".into());
            store.append(e, &self.keys)?;
            return Err(refusal(
                Code::Contribution,
                "the person already contributed to the open batch",
            ));
        }
        let (seq, _) = store.append_with(e, &self.keys, |tx, seq| {
            tx.execute(
                "INSERT INTO contribution (scene, person, report, public_share, input_share, audit_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    b.scene,
                    b.person,
                    b.report,
                    stored.public_share,
                    stored.input_share,
                    seq as i64
                ],
            )?;
            Ok(())
        })?;
        Ok(seq)
    }

    /// The open batch's reports, oldest first: (report nonce hex, stored).
    pub fn open_batch(&self, scene: &str) -> Result<Vec<(String, Stored)>> {
        let store = self.store_lock()?;
        let mut stmt = store.conn.prepare(
            "SELECT report, public_share, input_share FROM contribution
             WHERE scene = ?1 AND batch IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([scene], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (report, public_share, input_share) = row?;
            let nonce: [u8; 16] = hex::decode(&report)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::internal("stored report nonce"))?;
            out.push((
                report,
                Stored {
                    nonce,
                    public_share,
                    input_share,
                },
            ));
        }
        Ok(out)
    }

    /// Check a signed collection request: a researcher of the scene's
    /// requester, fresh, not replayed, naming the scene's two aggregators
    /// in order. Returns this node's aggregator index.
    pub fn authenticate_collect(&self, env: &Signed<CollectBody>) -> Result<usize> {
        let b = &env.body;
        if b.space != self.space.name {
            return Err(refusal(Code::Auth, "the request is bound to another space"));
        }
        let (key, cert) = crate::registry::View::open(&self.space)
            .map_err(|_| refusal(Code::Auth, "the identity registry is unavailable"))?
            .member_key(&b.member)?;
        env.verify(tag::COLLECT, &key, Code::Auth)?;
        if cert.body.role != Role::Researcher {
            return Err(refusal(Code::Auth, "only researchers collect"));
        }
        crate::identity::fresh(&b.time)?;
        let (sc, c, i) = self.contribution_scene(&b.scene)?;
        if cert.body.org != sc.requester {
            return Err(refusal(
                Code::Scene,
                "the researcher is not of the scene's requester",
            ));
        }
        if b.nodes.as_slice() != c.aggregators.as_slice() {
            return Err(refusal(
                Code::Federation,
                "collect from the scene's two aggregators, leader first",
            ));
        }
        self.store_lock()?
            .take_nonce(&b.member, &b.nonce, &b.time)?;
        Ok(i)
    }

    /// Record how a collection ended. When released, the batch's reports
    /// (`reports`, by nonce) are closed under the session: they are never
    /// collected again.
    pub fn audit_collection(
        &self,
        env: &Signed<CollectBody>,
        session: &[u8; 32],
        reports: &[String],
        outcome: std::result::Result<&BatchResult, (Code, &str)>,
    ) -> Result<u64> {
        let b = &env.body;
        let mut e = AuditEntry::new(
            self.name(),
            &b.member,
            &b.scene,
            Kind::Collection,
            Decision::Released,
            &self.space.policy_digest,
        );
        e.session = Some(hex::encode(session));
        match outcome {
            Ok(r) => {
                e.output_sha256 = Some(r.digest());
                e.rows_released = r.values.len() as u64;
                e.epsilon = r.epsilon;
            }
            Err((code, rule)) => {
                e.decide(if code == Code::FedAbort {
                    Decision::Aborted
                } else {
                    Decision::Refused
                });
                e.code = Some(code.as_str().into());
                e.rule = Some(rule.into());
            }
        }
        let released = outcome.is_ok();
        let batch = hex::encode(session);
        let (seq, _) = self.store_lock()?.append_with(e, &self.keys, |tx, _| {
            if released {
                let mut stmt = tx.prepare(
                    "UPDATE contribution SET batch = ?1 WHERE scene = ?2 AND report = ?3 AND batch IS NULL",
                )?;
                for r in reports {
                    stmt.execute(rusqlite::params![batch, b.scene, r])?;
                }
            }
            Ok(())
        })?;
        Ok(seq)
    }
}
