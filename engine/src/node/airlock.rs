//! The node's side of the airlock: acting on a held result (approve,
//! reject) and releasing it. The model (`Decision`, `Held`) is
//! [`crate::airlock`].

use rusqlite::{OptionalExtension, params};

use super::Node;
use crate::airlock::{Decision, Held, State, Verb};
use crate::audit::{self, Kind};
use crate::error::{Code, Error, Result, refuse};
use crate::identity::{Signed, tag};
use crate::store::now_utc;

impl Node {
    /// Held results on this node, oldest first.
    pub fn airlock(&self) -> Result<Vec<Held>> {
        let store = self.store_lock()?;
        let mut stmt = store.conn.prepare(
            "SELECT id, scene, actor, contract, state, digest, approvals, held_seq, created_at, decided_at
             FROM airlock ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, scene, requester, contract, state, digest, approvals, seq, created, decided) =
                row?;
            let needed = self.space.scenes.get(&scene).map_or(1, |s| s.approvers);
            out.push(Held {
                id: id as u64,
                approvals: serde_json::from_str(&approvals).map_err(Error::internal)?,
                scene,
                requester,
                contract,
                state: State::parse(&state)
                    .ok_or_else(|| Error::internal("stored airlock state"))?,
                output_sha256: digest,
                approvers_needed: needed,
                held_audit_seq: seq as u64,
                created_at: created,
                decided_at: decided,
            });
        }
        Ok(out)
    }

    /// The held results `member` may see: all of them for a data holder of
    /// this node, the ones they asked for otherwise (their output digest
    /// only once released).
    pub fn airlock_for(&self, member: &str) -> Result<Vec<Held>> {
        let all = self.airlock()?;
        if self.holder_here(member) {
            return Ok(all);
        }
        // The digest of bytes not released is for reviewers only: a small
        // result could be found by hashing guesses.
        Ok(all
            .into_iter()
            .filter(|h| h.requester == member)
            .map(|mut h| {
                if h.state != State::Released {
                    h.output_sha256.clear();
                }
                h
            })
            .collect())
    }

    fn held(&self, id: u64) -> Result<(Held, String)> {
        let h = self
            .airlock()?
            .into_iter()
            .find(|h| h.id == id)
            .ok_or_else(|| Error::refused(Code::Review, "no such held result on this node"))?;
        let bytes: String = self
            .store_lock()?
            .conn
            .query_row(
                "SELECT result FROM airlock WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| Error::internal("airlock row vanished"))?;
        Ok((h, bytes))
    }

    /// Apply a signed airlock action. `fetch` returns the held bytes (to a
    /// holder of this node at any time, to the requester once released);
    /// `approve` and `reject` return them once decided. Refusals are audited.
    pub fn airlock_act(&self, env: &Signed<Decision>) -> Result<(Held, Option<String>)> {
        let d = &env.body;
        let found = self.held(d.id);
        let scene = found
            .as_ref()
            .map(|(h, _)| h.scene.clone())
            .unwrap_or_default();
        let r = self.act_on_held(env, found);
        self.audit_refusal(r, &d.member, &scene, d.action.audit_kind(), None)
    }

    /// `found` is the held result the decision names, as already looked up.
    fn act_on_held(
        &self,
        env: &Signed<Decision>,
        found: Result<(Held, String)>,
    ) -> Result<(Held, Option<String>)> {
        let d = &env.body;
        if d.space != self.space.name || d.node != self.name {
            return refuse(Code::Review, "the decision is for another space or node");
        }
        let (h, bytes) = found?;
        if d.output_sha256 != h.output_sha256 {
            return refuse(Code::Review, "the signed digest is not the held result's");
        }
        let holder = self.holder_here(&d.member);
        match d.action {
            Verb::Fetch => {
                if !(holder || (d.member == h.requester && h.state == State::Released)) {
                    return refuse(
                        Code::Review,
                        "a held result is shown to the node's data holders, and to its requester once released",
                    );
                }
                self.check_signed(env, tag::REVIEW, &d.member, &d.nonce, &d.time, Code::Review)?;
                return Ok((h, Some(bytes)));
            }
            Verb::Approve | Verb::Reject => {}
        }
        if d.member == h.requester {
            return refuse(Code::Review, "a requester cannot review their own result");
        }
        if !holder {
            return refuse(
                Code::Review,
                "only a data holder of this node reviews results",
            );
        }
        if h.state != State::Held {
            return refuse(Code::Review, "the result is not held (already decided)");
        }
        if h.approvals.contains(&d.member) {
            return refuse(Code::Review, "this reviewer already approved");
        }
        if d.action == Verb::Approve
            && let Some(scene) = self.space.scenes.get(&h.scene)
            && self.space.jurisdiction_of(&h.requester) != self.space.jurisdiction
            && scene
                .datasets
                .iter()
                .any(|x| self.space.export_negative_list.contains(x))
        {
            return refuse(
                Code::CrossBorder,
                "the requester is outside the space's jurisdiction and the scene reads a dataset on the export negative list",
            );
        }
        self.check_signed(env, tag::REVIEW, &d.member, &d.nonce, &d.time, Code::Review)?;
        let mut approvals = h.approvals.clone();
        let (state, kind, decision) = if d.action == Verb::Reject {
            (
                State::Rejected,
                Kind::AirlockReject,
                audit::Decision::Rejected,
            )
        } else {
            approvals.push(d.member.clone());
            if approvals.len() >= h.approvers_needed as usize {
                (
                    State::Released,
                    Kind::AirlockRelease,
                    audit::Decision::Released,
                )
            } else {
                (State::Held, Kind::AirlockApprove, audit::Decision::Approved)
            }
        };
        let mut e = self.governance_entry(&d.member, &h.scene, kind, decision);
        e.contract = h.contract.clone();
        e.output_sha256 = Some(h.output_sha256.clone());
        let now = now_utc().1;
        let approvals_json = serde_json::to_string(&approvals).map_err(Error::internal)?;
        self.store_lock()?.append_with(e, &self.keys, |tx, _| {
            let n = tx.execute(
                "UPDATE airlock SET state = ?2, approvals = ?3,
                   decided_at = CASE WHEN ?2 = 'held' THEN NULL ELSE ?4 END
                 WHERE id = ?1 AND state = 'held' AND approvals = ?5",
                params![
                    d.id as i64,
                    state.as_str(),
                    approvals_json,
                    now,
                    serde_json::to_string(&h.approvals).map_err(Error::internal)?
                ],
            )?;
            if n == 0 {
                return refuse(Code::Review, "the held result changed meanwhile");
            }
            Ok(())
        })?;
        let (h, bytes) = self.held(d.id)?;
        let shown = (h.state == State::Released).then_some(bytes);
        Ok((h, shown))
    }
}
