//! The node's side of [`crate::accounting`]: a statement computed from its
//! audit log.

use std::collections::BTreeMap;

use crate::accounting::{Line, Statement};
use crate::audit::{Checkpoint, Decision, Kind};
use crate::error::{Code, Result, refuse};
use crate::identity::Role;
use crate::node::Node;
use crate::store::now_utc;

impl Node {
    /// What the node answered between `from` and `to` (UTC days,
    /// inclusive), per requester, scene and contract, for `member`: every
    /// requester for a data holder of this node and the operator, their own
    /// lines for a researcher. Computed under the node's latest signed
    /// checkpoint.
    pub fn statement(
        &self,
        member: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Statement> {
        let everyone = self.holder_here(member) || self.operator(member);
        let researcher = self
            .space
            .members
            .get(member)
            .is_some_and(|m| m.role == Role::Researcher);
        if !everyone && !researcher {
            return refuse(
                Code::Auth,
                "statements are made for the node's data holders, the operator and researchers (their own)",
            );
        }
        let valid = |d: Option<&str>| d.is_none_or(crate::identity::valid_date);
        if !valid(from) || !valid(to) {
            return refuse(Code::Request, "the period's days are YYYY-MM-DD");
        }
        let (checkpoint, entries, contributed) = {
            let store = self.store_lock()?;
            let checkpoint = store.latest_checkpoint()?;
            let size = match &checkpoint {
                Some(note) => Checkpoint::open(note, &self.keys.note)?.size,
                None => 0,
            };
            let mut entries = store.entries()?;
            entries.retain(|e| e.seq <= size);
            // What each result used of the data is for the node's data
            // holders and the operator only: exact counts.
            let contributed = if everyone {
                store.contributions()?
            } else {
                BTreeMap::new()
            };
            (checkpoint, entries, contributed)
        };
        let fees: BTreeMap<String, u64> = if everyone {
            self.contracts()?
                .into_iter()
                .filter_map(|c| Some((c.id, c.terms.fee_per_release?)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut lines: BTreeMap<(String, String, Option<String>), Line> = BTreeMap::new();
        for e in entries {
            let joint = match Kind::parse(&e.kind) {
                Some(Kind::Query) => false,
                Some(Kind::Federated | Kind::Psi) => true,
                _ => continue,
            };
            let day = e.time.get(..10).unwrap_or("");
            if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
                continue;
            }
            if !everyone && e.actor != member {
                continue;
            }
            let line = lines
                .entry((e.actor.clone(), e.scene.clone(), e.contract.clone()))
                .or_insert_with(|| Line {
                    requester: e.actor.clone(),
                    scene: e.scene.clone(),
                    contract: e.contract.clone(),
                    persons: None,
                    rows: everyone.then_some(0),
                    value: e
                        .contract
                        .as_ref()
                        .filter(|c| fees.contains_key(*c))
                        .map(|_| 0.0),
                    ..Line::default()
                });
            line.queries += 1;
            line.joint += u64::from(joint);
            match Decision::parse(&e.decision) {
                Some(Decision::Released) => line.released += 1,
                Some(Decision::Held) => line.held += 1,
                Some(Decision::Aborted) => line.aborted += 1,
                _ => line.refused += 1,
            }
            line.epsilon += e.epsilon.unwrap_or(0.0);
            let Some(c) = contributed
                .get(&e.seq)
                .filter(|c| e.contribution.as_deref() == Some(c.commitment().as_str()))
            else {
                continue;
            };
            if let Some(p) = c.persons {
                line.persons = Some(line.persons.unwrap_or(0) + p);
            }
            line.rows = line.rows.map(|r| r + c.rows);
            if let (Some(v), Some(fee), Some(Decision::Released)) = (
                line.value.as_mut(),
                e.contract.as_ref().and_then(|id| fees.get(id)),
                Decision::parse(&e.decision),
            ) {
                *v += *fee as f64 * c.share();
            }
        }
        Ok(Statement {
            space: self.space.name.clone(),
            node: self.name.clone(),
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            made_at: now_utc().1,
            made_for: member.to_string(),
            checkpoint,
            lines: lines.into_values().collect(),
        })
    }
}
