//! The node's side of the one DP budget per requester: charging its own
//! ledger and its peers' before a query runs, accepting a peer's charge, and
//! the budgets shown by `kexin budget show`. The model is `crate::ledger`.

use std::sync::Arc;

use crate::audit::{AuditEntry, Decision, Kind};
use crate::error::{Code, Error, Result};
use crate::identity::Role;
use crate::ledger::{Budget, Caps, Charge, PeerLedger, Replicate, Spent};
use crate::node::{Node, refusal};
use crate::policy::{PrivacyRules, Scene};

const SHORT: &str = "the requester's privacy budget cannot cover another query (this scene's or the organisation's total over all scenes and nodes)";

impl Node {
    /// Let this node reach its peers' ledgers (the node service does).
    pub fn set_peer_ledger(&self, peers: Arc<dyn PeerLedger>) {
        // A second call keeps the first: the peers do not change while a
        // node runs.
        let _ = self.peers.set(peers);
    }

    /// Charge one DP release before it is computed: checked here, then
    /// accepted by the peers `replicate` names, then recorded here. Fails
    /// closed with `KX-DP-BUDGET` when any cap or any peer says no.
    /// `privacy` is the scene's rules as they apply to this request, and
    /// `contract_cap` a contract's ε cap on the researcher's own spending.
    pub(crate) async fn charge_dp(
        &self,
        scene: &Scene,
        privacy: &PrivacyRules,
        contract_cap: Option<f64>,
        actor: &str,
        delta: f64,
        replicate: Replicate<'_>,
    ) -> Result<Spent> {
        let (charge, mut caps) = self.charge_for(scene, actor, privacy.epsilon_per_query, delta)?;
        caps.actor = contract_cap;
        if !self.store_lock()?.dp_fits(&charge, &caps)? {
            return Err(refusal(Code::DpBudget, SHORT));
        }
        let skip: Option<&[String]> = match replicate {
            Replicate::All => Some(&[]),
            Replicate::Outside(parties) => Some(parties),
            Replicate::Nobody => None,
        };
        let others = |skip: &[String]| {
            self.space
                .nodes
                .iter()
                .any(|n| *n != self.name && !skip.contains(n))
        };
        if let Some(skip) = skip.filter(|s| others(s)).map(<[String]>::to_vec) {
            let Some(peers) = self.peers.get().cloned() else {
                return Err(refusal(
                    Code::DpBudget,
                    "every node of the space must accept a DP charge and this node cannot reach them: ask through the node service",
                ));
            };
            let c = charge.clone();
            let accepted = tokio::task::spawn_blocking(move || peers.replicate(&c, &skip))
                .await
                .map_err(Error::internal)?;
            if let Err(rule) = accepted {
                tracing::info!(target: "kexin::node", "a peer did not accept a DP charge: {rule}");
                return Err(refusal(Code::DpBudget, rule));
            }
        }
        self.store_lock()?
            .dp_charge(&charge, &caps)?
            .ok_or_else(|| refusal(Code::DpBudget, SHORT))
    }

    /// A charge another node of the space replicated here: recorded under
    /// the same caps, and audited as `budget-charge` with the node it came
    /// from. Returns the refusal rule when it does not fit.
    pub fn accept_peer_charge(&self, from: &str, charge: &Charge) -> Result<Spent> {
        let Some(scene) = self.space.scenes.get(&charge.scene) else {
            return Err(refusal(Code::Scene, "unknown scene"));
        };
        if scene.requester != charge.org
            || !(charge.epsilon.is_finite() && charge.epsilon > 0.0)
            || !(charge.delta.is_finite() && charge.delta >= 0.0)
        {
            return Err(refusal(
                Code::DpBudget,
                "the charge does not match the scene's requester and privacy rules",
            ));
        }
        let (_, caps) = self.charge_for(scene, &charge.actor, charge.epsilon, charge.delta)?;
        let mut store = self.store_lock()?;
        let spent = store.dp_charge(charge, &caps)?;
        let mut e = AuditEntry::new(
            &self.name,
            &charge.actor,
            &charge.scene,
            Kind::BudgetCharge,
            if spent.is_some() {
                Decision::Released
            } else {
                Decision::Refused
            },
            &self.space.policy_digest,
        );
        e.epsilon = Some(charge.epsilon);
        e.charged_by = Some(from.to_string());
        if spent.is_none() {
            e.code = Some(Code::DpBudget.as_str().to_string());
            e.rule = Some(SHORT.to_string());
        }
        store.append_with(e, &self.keys, |_, _| Ok(()))?;
        spent.ok_or_else(|| refusal(Code::DpBudget, SHORT))
    }

    /// The charge for one release under `scene`, with the scene's and the
    /// organisation's caps.
    fn charge_for(
        &self,
        scene: &Scene,
        actor: &str,
        epsilon: f64,
        delta: f64,
    ) -> Result<(Charge, Caps)> {
        let (Some(p), Some(org)) = (
            &scene.privacy,
            self.space.requester_budget(&scene.requester),
        ) else {
            return Err(refusal(Code::DpBudget, "the scene has no privacy budget"));
        };
        let charge = Charge {
            org: scene.requester.clone(),
            scene: scene.name.clone(),
            actor: actor.to_string(),
            epsilon,
            delta,
        };
        let caps = Caps {
            scene: p.epsilon_total,
            org,
            actor: None,
        };
        Ok((charge, caps))
    }

    /// The ledger rows `member` may see: a data holder of this node or the
    /// operator sees everyone's (or `actor`'s), anyone else only their own.
    pub fn budgets_for(
        &self,
        member: &str,
        actor: Option<&str>,
        scene: Option<&str>,
    ) -> Result<Vec<Budget>> {
        let operator = self.operator(member);
        if operator || self.holder_here(member) {
            self.budgets(actor, scene)
        } else {
            self.budgets(Some(member), scene)
        }
    }

    /// The DP budget ledger: every DP scene the researcher (or, without
    /// one, every researcher whose organisation has charges) may query,
    /// with what its organisation has spent.
    pub fn budgets(&self, actor: Option<&str>, scene: Option<&str>) -> Result<Vec<Budget>> {
        let spent = self.store_lock()?.dp_spent(None, scene)?;
        let mut out = Vec::new();
        for sc in self.space.scenes.values() {
            let Some(p) = &sc.privacy else { continue };
            if scene.is_some_and(|s| s != sc.name) {
                continue;
            }
            let researchers: Vec<&str> = self
                .space
                .members
                .values()
                .filter(|m| m.role == Role::Researcher && m.org == sc.requester)
                .map(|m| m.name.as_str())
                .collect();
            let row = spent
                .iter()
                .find(|s| s.scene == sc.name && s.org == sc.requester);
            let actors: Vec<&str> = match actor {
                Some(a) => researchers.into_iter().filter(|r| *r == a).collect(),
                None if row.is_some() => researchers,
                None => vec![],
            };
            let org_total = self
                .space
                .requester_budget(&sc.requester)
                .unwrap_or(p.epsilon_total);
            let org_spent = self.store_lock()?.dp_org_spent(&sc.requester)?;
            for a in actors {
                let eps = row.map_or(0.0, |r| r.epsilon_spent);
                out.push(Budget {
                    node: self.name.clone(),
                    scene: sc.name.clone(),
                    actor: a.to_string(),
                    org: sc.requester.clone(),
                    epsilon_total: p.epsilon_total,
                    epsilon_per_query: p.epsilon_per_query,
                    epsilon_spent: eps,
                    epsilon_remaining: (p.epsilon_total - eps).min(org_total - org_spent).max(0.0),
                    delta_spent: row.map_or(0.0, |r| r.delta_spent),
                    queries: row.map_or(0, |r| r.queries),
                    requester_epsilon_total: org_total,
                    requester_epsilon_spent: org_spent,
                });
            }
        }
        Ok(out)
    }
}
