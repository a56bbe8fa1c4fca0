//! The node's contract services: signed requests and their nonces, offering,
//! agreeing, finalizing and terminating contracts, and the contract and
//! export checks of a query. The contract model is `crate::contract`.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::audit::{AuditEntry, Decision, Kind};
use crate::contract::{Action, Contract, State, Terms, Verb};
use crate::error::{Code, Error, Result, refuse};
use crate::identity::{self, Role, Signed, tag};
use crate::node::{Node, QueryRequest};
use crate::policy::Release;
use crate::store::now_utc;

impl Node {
    /// Check that `member` signed `env`, the request is fresh and its nonce
    /// unused; returns the member's certified role.
    pub(crate) fn check_signed<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        env: &Signed<T>,
        tag: &str,
        member: &str,
        nonce: &str,
        time: &str,
        code: Code,
    ) -> Result<Role> {
        let (key, cert) = crate::registry::View::open(&self.space)
            .map_err(|_| Error::refused(Code::Auth, "the identity registry is unavailable"))?
            .member_key(member)?;
        env.verify(tag, &key, code)?;
        identity::fresh(time)?;
        self.store_lock()?.take_nonce(member, nonce, time)?;
        Ok(cert.body.role)
    }

    /// Authenticate a call to the node's API: bound to this space and
    /// node, signed by the member's certified key, fresh, its nonce unused
    /// (kept durably, as for every signed request). Returns the member's
    /// certified role. The caller checks that the method, target and body
    /// digest are the call's own. Refusals are `KX-AUTH` and are not
    /// audited: like a failed TLS handshake on a peer link, nothing was
    /// asked of the node yet.
    pub fn authenticate_request(&self, env: &Signed<identity::RequestBody>) -> Result<Role> {
        let b = &env.body;
        if b.space != self.space.name || b.node != self.name {
            return refuse(Code::Auth, "the request is bound to another space or node");
        }
        self.check_signed(env, tag::REQUEST, &b.member, &b.nonce, &b.time, Code::Auth)
    }

    /// The space's operator (space.toml's member with role `operator`).
    pub(crate) fn operator(&self, member: &str) -> bool {
        self.space
            .members
            .get(member)
            .is_some_and(|m| m.role == Role::Operator)
    }

    /// A data-holder member acting for this node.
    pub(crate) fn holder_here(&self, member: &str) -> bool {
        self.space
            .members
            .get(member)
            .is_some_and(|m| m.role == Role::Holder && m.nodes.contains(&self.name))
    }

    pub(crate) fn governance_entry(
        &self,
        actor: &str,
        scene: &str,
        kind: Kind,
        decision: Decision,
    ) -> AuditEntry {
        AuditEntry::new(
            &self.name,
            actor,
            scene,
            kind,
            decision,
            &self.space.policy_digest,
        )
    }

    /// Record a refused governance action in the node's audit log (the
    /// refusal is returned to the caller either way).
    pub(crate) fn audit_refusal<T>(
        &self,
        result: Result<T>,
        actor: &str,
        scene: &str,
        kind: Kind,
        contract: Option<&str>,
    ) -> Result<T> {
        if let Err(Error::Refused(r)) = &result {
            let mut e = self.governance_entry(actor, scene, kind, Decision::Refused);
            e.code = Some(r.code.as_str().to_string());
            e.rule = Some(r.rule.to_string());
            e.contract = contract.map(str::to_string);
            match self.store_lock().and_then(|mut s| s.append(e, &self.keys)) {
                Ok((seq, _)) => return Err(Error::Refused(r.audited(seq))),
                Err(x) => tracing::error!(target: "kexin::node", "audit append failed: {x}"),
            }
        }
        result
    }

    /// A data holder of this node offers a contract (signed terms). Refusals
    /// are audited too.
    pub fn contract_offer(&self, env: &Signed<Terms>) -> Result<Contract> {
        let t = &env.body;
        let r = self.offer_checked(env);
        self.audit_refusal(r, &t.holder, &t.scene, Kind::ContractOffer, None)
    }

    fn offer_checked(&self, env: &Signed<Terms>) -> Result<Contract> {
        let t = &env.body;
        if t.space != self.space.name || t.node != self.name {
            return refuse(Code::Contract, "the terms are for another space or node");
        }
        if !self.holder_here(&t.holder) {
            return refuse(
                Code::Contract,
                "only a data holder of this node offers contracts",
            );
        }
        let scene = self
            .space
            .scenes
            .get(&t.scene)
            .ok_or_else(|| Error::refused(Code::Scene, "unknown scene"))?;
        if !self
            .space
            .members
            .get(&t.requester)
            .is_some_and(|m| m.role == Role::Researcher && m.org == scene.requester)
        {
            return refuse(
                Code::Contract,
                "the requester is not a researcher of the scene's requester",
            );
        }
        if t.datasets.is_empty() || t.datasets.iter().any(|d| !scene.datasets.contains(d)) {
            return refuse(
                Code::Contract,
                "the datasets must be a non-empty subset of the scene's",
            );
        }
        if (t.release, scene.release) == (Release::Auto, Release::Review) {
            return refuse(
                Code::Contract,
                "the scene's results need review; the contract cannot waive it",
            );
        }
        if t.max_queries == 0 || t.max_queries > 1_000_000 {
            return refuse(Code::Contract, "max_queries must be 1..=1000000");
        }
        if let Some(e) = t.epsilon {
            let ok = scene.privacy.is_some() && e.is_finite() && e > 0.0;
            if !ok {
                return refuse(
                    Code::Contract,
                    "an ε cap needs a DP scene and a positive value",
                );
            }
        }
        if !identity::valid_date(&t.valid_to) || t.valid_to > scene.valid_to {
            return refuse(
                Code::Contract,
                "valid_to must be a date within the scene's validity",
            );
        }
        self.check_signed(
            env,
            tag::CONTRACT,
            &t.holder,
            &t.nonce,
            &t.time,
            Code::Contract,
        )?;
        let id = t.id();
        let terms = serde_json::to_string(t).map_err(Error::internal)?;
        let sig = serde_json::to_string(&[serde_json::to_value(env).map_err(Error::internal)?])
            .map_err(Error::internal)?;
        let mut e =
            self.governance_entry(&t.holder, &t.scene, Kind::ContractOffer, Decision::Offered);
        e.contract = Some(id.clone());
        let now = now_utc().1;
        self.store_lock()?.append_with(e, &self.keys, |tx, _| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO contract (id, terms, state, actions, queries_used, updated_at)
                 VALUES (?1, ?2, 'OFFERED', ?3, 0, ?4)",
                params![id, terms, sig, now],
            )?;
            if n == 0 {
                return refuse(Code::Contract, "a contract with these terms exists");
            }
            Ok(())
        })?;
        self.contract(&id)
    }

    /// The requester agrees, a holder finalizes, or either terminates.
    /// Refusals are audited too.
    pub fn contract_act(&self, env: &Signed<Action>) -> Result<Contract> {
        let a = &env.body;
        let found = self.contract(&a.contract);
        let scene = found
            .as_ref()
            .map(|c| c.terms.scene.clone())
            .unwrap_or_default();
        let r = self.act_checked(env, found);
        self.audit_refusal(
            r,
            &a.member,
            &scene,
            a.action.audit_kind(),
            Some(&a.contract),
        )
    }

    /// `found` is the contract the action names, as already looked up.
    fn act_checked(&self, env: &Signed<Action>, found: Result<Contract>) -> Result<Contract> {
        let a = &env.body;
        if a.space != self.space.name || a.node != self.name {
            return refuse(Code::Contract, "the action is for another space or node");
        }
        let c = found?;
        let allowed = match a.action {
            Verb::Agree => a.member == c.terms.requester,
            Verb::Finalize => self.holder_here(&a.member),
            Verb::Terminate => a.member == c.terms.requester || self.holder_here(&a.member),
        };
        if !allowed {
            return refuse(
                Code::Contract,
                "this member may not take this action on the contract",
            );
        }
        let Some(next) = c.state.after(a.action) else {
            return refuse(
                Code::Contract,
                "the action is not allowed in the contract's state",
            );
        };
        self.check_signed(
            env,
            tag::CONTRACT,
            &a.member,
            &a.nonce,
            &a.time,
            Code::Contract,
        )?;
        let mut e = self.governance_entry(
            &a.member,
            &c.terms.scene,
            a.action.audit_kind(),
            match next {
                State::Offered => Decision::Offered,
                State::Agreed => Decision::Agreed,
                State::Finalized => Decision::Finalized,
                State::Terminated => Decision::Terminated,
            },
        );
        e.contract = Some(c.id.clone());
        let signed = serde_json::to_value(env).map_err(Error::internal)?;
        let now = now_utc().1;
        self.store_lock()?.append_with(e, &self.keys, |tx, _| {
            // Compare-and-set on the state read above: a concurrent action
            // that moved the contract first wins, this one is refused.
            let actions: String = tx
                .query_row(
                    "SELECT actions FROM contract WHERE id = ?1 AND state = ?2",
                    params![c.id, c.state.as_str()],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| {
                    Error::refused(Code::Contract, "the contract changed state meanwhile")
                })?;
            let mut list: Vec<serde_json::Value> =
                serde_json::from_str(&actions).map_err(Error::internal)?;
            list.push(signed.clone());
            tx.execute(
                "UPDATE contract SET state = ?2, actions = ?3, updated_at = ?4 WHERE id = ?1",
                params![
                    c.id,
                    next.as_str(),
                    serde_json::to_string(&list).map_err(Error::internal)?,
                    now
                ],
            )?;
            Ok(())
        })?;
        self.contract(&c.id)
    }

    /// One contract on this node.
    pub fn contract(&self, id: &str) -> Result<Contract> {
        self.contracts()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::refused(Code::Contract, "no such contract on this node"))
    }

    /// The contracts `member` may see: all of them for a data holder of
    /// this node, the ones naming them as requester for anyone else.
    pub fn contracts_for(&self, member: &str) -> Result<Vec<Contract>> {
        let all = self.contracts()?;
        if self.holder_here(member) {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .filter(|c| c.terms.requester == member)
            .collect())
    }

    /// Every contract on this node, oldest first.
    pub fn contracts(&self) -> Result<Vec<Contract>> {
        let store = self.store_lock()?;
        let mut stmt = store.conn.prepare(
            "SELECT id, terms, state, actions, queries_used, updated_at FROM contract ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, terms, state, actions, used, updated_at) = row?;
            out.push(Contract {
                id,
                state: State::parse(&state)
                    .ok_or_else(|| Error::internal("stored contract state"))?,
                terms: serde_json::from_str(&terms).map_err(Error::internal)?,
                queries_used: used as u64,
                updated_at,
                signatures: serde_json::from_str(&actions).map_err(Error::internal)?,
            });
        }
        Ok(out)
    }

    /// The contract a query runs under: named, or the requester's only
    /// active one for the scene. It must be active, unexpired and have
    /// queries left; one query is counted, durably, before the query runs.
    pub(crate) fn take_contract(&self, req: &QueryRequest) -> Result<Contract> {
        let today = now_utc().0;
        let mine: Vec<Contract> = self
            .contracts()?
            .into_iter()
            .filter(|c| c.terms.requester == req.actor && c.terms.scene == req.scene)
            .collect();
        let c = match &req.contract {
            Some(id) => mine.into_iter().find(|c| &c.id == id),
            None => {
                let mut active = mine.into_iter().filter(|c| c.state.active());
                match (active.next(), active.next()) {
                    (Some(c), None) => Some(c),
                    (Some(_), Some(_)) => {
                        return refuse(
                            Code::Contract,
                            "several contracts cover the scene; name one with --contract",
                        );
                    }
                    _ => None,
                }
            }
        };
        let Some(c) = c else {
            return refuse(
                Code::Contract,
                "no contract between this node and the requester covers the scene",
            );
        };
        if !c.state.active() {
            return refuse(
                Code::Contract,
                "the contract is not agreed (or was terminated)",
            );
        }
        if today.as_str() > c.terms.valid_to.as_str() {
            return refuse(Code::Contract, "the contract has expired");
        }
        self.check_not_paused(&c)?;
        let mut store = self.store_lock()?;
        let tx = store
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken = tx.execute(
            "UPDATE contract SET queries_used = queries_used + 1
             WHERE id = ?1 AND state IN ('AGREED', 'FINALIZED') AND queries_used < ?2",
            params![c.id, c.terms.max_queries as i64],
        )?;
        tx.commit()?;
        if taken == 0 {
            return refuse(Code::Contract, "the contract's queries are used up");
        }
        Ok(c)
    }

    /// The cross-border rule: a requester outside the space's jurisdiction
    /// gets nothing computed from a dataset on the export negative list.
    pub(crate) fn check_export(
        &self,
        actor: &str,
        plan: &datafusion::logical_expr::LogicalPlan,
    ) -> Result<()> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        if self.space.jurisdiction_of(actor) == self.space.jurisdiction
            || self.space.export_negative_list.is_empty()
        {
            return Ok(());
        }
        let mut hit = false;
        let _ = plan.apply_with_subqueries(|n| {
            if let datafusion::logical_expr::LogicalPlan::TableScan(s) = n
                && self
                    .space
                    .export_negative_list
                    .iter()
                    .any(|d| d == s.table_name.table())
            {
                hit = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if hit {
            return refuse(
                Code::CrossBorder,
                "the requester is outside the space's jurisdiction and the query reads a dataset on the export negative list",
            );
        }
        Ok(())
    }
}
