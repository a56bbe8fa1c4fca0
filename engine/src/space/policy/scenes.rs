//! `[scene.*]`: the scenes of `space.toml`, each checked against the
//! datasets, members and privacy settings read before it.

use super::load::*;
use super::raw::*;
use super::*;

impl Sections<'_> {
    /// `[scene.*]`, against the datasets and nodes already read.
    pub(super) fn scenes(
        &self,
        raw: BTreeMap<String, RawScene>,
        datasets: &BTreeMap<String, Dataset>,
        nodes: &[String],
    ) -> Result<BTreeMap<String, Scene>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut scenes = BTreeMap::new();
        for (sname, s) in raw {
            let at = |f: &str| format!("scene.{sname}.{f}");
            if !valid_name(&sname) {
                return Err(err(
                    format!("scene.{sname}"),
                    "scene name must be 1-32 of [a-z0-9_-]".into(),
                ));
            }
            if s.purpose.trim().is_empty() {
                return Err(err(at("purpose"), "must not be empty".into()));
            }
            if s.requester.trim().is_empty() {
                return Err(err(at("requester"), "must not be empty".into()));
            }
            if s.datasets.is_empty() && s.contribution.is_none() {
                return Err(err(at("datasets"), "list at least one dataset".into()));
            }
            for d in &s.datasets {
                if !datasets.contains_key(d) {
                    return Err(err(at("datasets"), format!("unknown dataset {d:?}")));
                }
            }
            let columns = match s.columns {
                None => None,
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for qc in list {
                        let ok = qc.split_once('.').is_some_and(|(d, c)| {
                            s.datasets.iter().any(|x| x == d)
                                && datasets.get(d).is_some_and(|ds| ds.columns.contains_key(c))
                        });
                        if !ok {
                            return Err(err(
                                at("columns"),
                                format!(
                                    "{qc:?} is not dataset.column of a dataset listed in the scene"
                                ),
                            ));
                        }
                        set.insert(qc);
                    }
                    Some(set)
                }
            };
            let consent = match s.consent.as_deref() {
                None | Some("none") => ConsentMode::None,
                Some("required") => ConsentMode::Required,
                Some(other) => {
                    return Err(err(
                        at("consent"),
                        format!("{other:?}: expected \"required\" or \"none\""),
                    ));
                }
            };
            let release = match s.release.as_deref().map(Release::parse) {
                None => Release::Auto,
                Some(Some(r)) => r,
                Some(None) => {
                    let other = s.release.as_deref().unwrap_or_default();
                    return Err(err(
                        at("release"),
                        format!("{other:?}: expected \"auto\" or \"review\""),
                    ));
                }
            };
            let purpose_code = crate::purpose::Purpose::parse(&s.purpose, s.disease.as_deref())
                .map_err(|e| err(at("purpose"), e))?;
            let scene_nodes = s.nodes.clone().unwrap_or_else(|| nodes.to_vec());
            if s.nodes.is_some() && !s.federated {
                return Err(err(
                    at("nodes"),
                    "only federated scenes list their nodes".into(),
                ));
            }
            if let Some(n) = scene_nodes.iter().find(|n| !nodes.contains(n)) {
                return Err(err(at("nodes"), format!("{n:?} is not in space.nodes")));
            }
            if s.federated && release == Release::Review {
                return Err(err(
                    at("release"),
                    "federated scenes release automatically (no node holds a joint result for review)".into(),
                ));
            }
            let fhe_gate = match s.fhe_gate {
                None => None,
                Some(g) => {
                    if !s.federated || s.privacy.is_some() {
                        return Err(err(
                            at("fhe_gate"),
                            "only federated scenes without DP gate under FHE".into(),
                        ));
                    }
                    if g.aggregator == g.key_holder
                        || !scene_nodes.contains(&g.aggregator)
                        || !scene_nodes.contains(&g.key_holder)
                    {
                        return Err(err(
                            at("fhe_gate"),
                            "aggregator and key_holder must be two different nodes of the scene"
                                .into(),
                        ));
                    }
                    Some(FheGate {
                        aggregator: g.aggregator,
                        key_holder: g.key_holder,
                    })
                }
            };
            let contribution = match s.contribution {
                None => None,
                Some(c) => {
                    let bad = |why: &str| err(at("contribution"), why.to_string());
                    if s.federated {
                        return Err(bad("a contribution scene is not a federated query scene"));
                    }
                    let kind = match (c.kind.as_str(), c.max, c.buckets) {
                        ("sum", Some(max), None) if (1..=(1u64 << 40)).contains(&max) => {
                            ContributionKind::Sum { max }
                        }
                        ("histogram", None, Some(b))
                            if (2..=1024).contains(&b.len())
                                && b.iter().collect::<BTreeSet<_>>().len() == b.len() =>
                        {
                            ContributionKind::Histogram { buckets: b }
                        }
                        _ => {
                            return Err(bad(
                                "expected kind = \"sum\" with max in 1..=2^40, or kind = \"histogram\" with 2..=1024 distinct buckets",
                            ));
                        }
                    };
                    let [a, b] = c.aggregators;
                    if a == b || !nodes.contains(&a) || !nodes.contains(&b) {
                        return Err(bad("aggregators must be two different nodes of the space"));
                    }
                    let min_batch = c.min_batch.unwrap_or(100);
                    if !(2..=10_000_000).contains(&min_batch) {
                        return Err(bad("min_batch must be 2..=10000000"));
                    }
                    if let Some(e) = c.epsilon
                        && !(e.is_finite() && (1e-3..=100.0).contains(&e))
                    {
                        return Err(bad("epsilon must be in 0.001..=100"));
                    }
                    Some(Contribution {
                        kind,
                        min_batch,
                        aggregators: [a, b],
                        epsilon: c.epsilon,
                    })
                }
            };
            let approvers = s.approvers.unwrap_or(1);
            if !(1..=2).contains(&approvers) {
                return Err(err(at("approvers"), "must be 1 or 2".into()));
            }
            let contract = match s.contract.as_deref() {
                None | Some("required") => ContractMode::Required,
                Some("none") => ContractMode::None,
                Some(other) => {
                    return Err(err(
                        at("contract"),
                        format!("{other:?}: expected \"required\" or \"none\""),
                    ));
                }
            };
            if contribution.is_some() && contract == ContractMode::Required {
                return Err(err(
                    at("contract"),
                    "a contribution scene releases only batch totals: set contract = \"none\""
                        .into(),
                ));
            }
            let [from, to] = s.valid;
            for (f, v) in [("valid[0]", &from), ("valid[1]", &to)] {
                if !valid_date(v) {
                    return Err(err(at(f), format!("{v:?} is not a date YYYY-MM-DD")));
                }
            }
            if from > to {
                return Err(err(at("valid"), "the start is after the end".into()));
            }
            let raw_out = s.output.unwrap_or(RawOutput {
                min_persons: None,
                round_to: None,
                decimals: None,
                dominance: None,
            });
            let min_persons = raw_out.min_persons.unwrap_or(10);
            if min_persons < 2 {
                return Err(err(at("output.min_persons"), "must be at least 2".into()));
            }
            let round_to = raw_out.round_to.unwrap_or(1);
            if round_to == 0 || round_to > 1000 {
                return Err(err(at("output.round_to"), "must be 1..=1000".into()));
            }
            let decimals = raw_out.decimals.unwrap_or(2);
            if decimals > 6 {
                return Err(err(at("output.decimals"), "must be 0..=6".into()));
            }
            let dominance = match raw_out.dominance {
                None => None,
                Some((n, k)) => {
                    if !((1..=3).contains(&n) && k > 0.0 && k <= 1.0) {
                        return Err(err(
                            at("output.dominance"),
                            "expected [n, k] with n in 1..=3 and 0 < k <= 1".into(),
                        ));
                    }
                    Some(Dominance { n, k })
                }
            };
            let privacy = match s.privacy {
                None => None,
                Some(p) => {
                    let delta = p.delta.unwrap_or(0.0);
                    let ok = p.epsilon_total.is_finite()
                        && p.epsilon_total > 0.0
                        && p.epsilon_total <= 100.0
                        && p.epsilon_per_query.is_finite()
                        && p.epsilon_per_query >= 1e-4
                        && p.epsilon_per_query <= p.epsilon_total
                        && (0.0..1e-3).contains(&delta);
                    if !ok {
                        return Err(err(
                            at("privacy"),
                            "need 0.0001 <= epsilon_per_query <= epsilon_total <= 100 and 0 <= delta < 0.001"
                                .into(),
                        ));
                    }
                    let rows_per_person = p.rows_per_person.unwrap_or(1);
                    let groups_per_person = p.groups_per_person.unwrap_or(1);
                    if !(1..=100).contains(&rows_per_person)
                        || !(1..=1000).contains(&groups_per_person)
                    {
                        return Err(err(
                            at("privacy"),
                            "need rows_per_person in 1..=100 and groups_per_person in 1..=1000"
                                .into(),
                        ));
                    }
                    if dominance.is_some() {
                        return Err(err(
                            at("output.dominance"),
                            "the dominance rule does not apply in DP mode (contributions are bounded and noised); remove it"
                                .into(),
                        ));
                    }
                    Some(PrivacyRules {
                        epsilon_total: p.epsilon_total,
                        epsilon_per_query: p.epsilon_per_query,
                        delta,
                        rows_per_person,
                        groups_per_person,
                    })
                }
            };
            let udfs: Vec<String> = s.udfs.iter().map(|u| u.to_ascii_lowercase()).collect();
            for u in &udfs {
                let ok = u
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !ok {
                    return Err(err(
                        at("udfs"),
                        format!("{u:?} is not sha256:<64 hex digits>"),
                    ));
                }
            }
            let udf_limits = kexin_sandbox::Limits::default()
                .call_limits(&s.udf_limits.unwrap_or_default())
                .map_err(|e| err(at("udf_limits"), e.to_string()))?;
            scenes.insert(
                sname.clone(),
                Scene {
                    name: sname,
                    purpose: s.purpose,
                    disease: s.disease,
                    purpose_code,
                    purpose_zh: s.purpose_zh,
                    non_profit: s.non_profit,
                    irb: s.irb,
                    requester: s.requester,
                    datasets: s.datasets,
                    columns,
                    consent,
                    valid_from: from,
                    valid_to: to,
                    release,
                    approvers,
                    contract,
                    federated: s.federated,
                    nodes: scene_nodes,
                    fhe_gate,
                    contribution,
                    output: OutputRules {
                        min_persons,
                        round_to,
                        decimals,
                        dominance,
                    },
                    privacy,
                    udfs,
                    udf_limits,
                },
            );
        }
        Ok(scenes)
    }
}
