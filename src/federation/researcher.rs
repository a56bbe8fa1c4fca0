//! The researcher's side of joint computations: sign the request, send it
//! to every node, start the rounds only when every node is ready with the
//! same plan, and accept rows only when every node released the same rows.

use std::time::Duration;

use anyhow::{Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::Code;
use kexin_engine::federated::{FederateBody, JointRows, PsiBody, PsiMode, session_id};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::policy::Space;
use serde::Serialize;

use super::config::{FedConfig, node_key};
use super::wire::{FromNode, PsiResult, ToNode};
use crate::net::Link;

/// How a joint request ended for the researcher (or the individual): a
/// closed set, written as the strings scripts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JointStatus {
    Released,
    Refused,
    /// A round started and ended with no release.
    Aborted,
    /// `kexin contribute`: both aggregators stored their share.
    Accepted,
    /// `kexin contribute`: one aggregator stored it (never counted).
    Partial,
}

impl JointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JointStatus::Released => "released",
            JointStatus::Refused => "refused",
            JointStatus::Aborted => "aborted",
            JointStatus::Accepted => "accepted",
            JointStatus::Partial => "partial",
        }
    }

    /// The command's exit status: 0 released or accepted, the federated
    /// abort's status for a round that broke off (or half a contribution),
    /// 3 refused.
    pub fn exit_status(self) -> i32 {
        match self {
            JointStatus::Released | JointStatus::Accepted => 0,
            JointStatus::Aborted | JointStatus::Partial => Code::FedAbort.exit_status(),
            JointStatus::Refused => 3,
        }
    }
}

impl std::fmt::Display for JointStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one node stands, as the researcher saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeDecision {
    /// No answer to the request (not connected, or it went away).
    Unreachable,
    Ready,
    Refused,
    Released,
    Aborted,
    Accepted,
    /// Ready, then no final answer.
    #[serde(rename = "no answer")]
    NoAnswer,
}

impl NodeDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeDecision::Unreachable => "unreachable",
            NodeDecision::Ready => "ready",
            NodeDecision::Refused => "refused",
            NodeDecision::Released => "released",
            NodeDecision::Aborted => "aborted",
            NodeDecision::Accepted => "accepted",
            NodeDecision::NoAnswer => "no answer",
        }
    }
}

impl std::fmt::Display for NodeDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one node ended a federated query, as the researcher saw it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub decision: NodeDecision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// The researcher's result of `kexin federate`.
#[derive(Debug, Clone, Serialize)]
pub struct FederatedOutcome {
    pub status: JointStatus,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<kexin_engine::gate::Cell>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accuracy: Vec<Vec<Option<kexin_engine::dp::Accuracy>>>,
    pub suppressed_groups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub explanation: Vec<String>,
    /// The session digest every node's audit entry carries.
    pub session: String,
    pub nodes: Vec<NodeReport>,
}

impl FederatedOutcome {
    pub fn exit_status(&self) -> i32 {
        self.status.exit_status()
    }
}

/// A researcher's connection to each node, opened in parallel.
pub(crate) fn connect_all(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    nodes: &[String],
) -> Vec<Result<Link>> {
    let t = cfg.round_timeout();
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let key = node_key(space, cfg, n)?;
                    Link::connect(&cfg.addr(n)?.address, me, &key, t)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("connect thread panicked")))
            })
            .collect()
    })
}

/// Send `msg` on every link and read one reply from each (in parallel),
/// waiting at most `wait`.
fn exchange(links: &mut [Option<Link>], msg: &ToNode, wait: Duration) -> Vec<Result<FromNode>> {
    let bytes = match serde_json::to_vec(msg) {
        Ok(b) => b,
        Err(e) => return links.iter().map(|_| Err(anyhow!("{e}"))).collect(),
    };
    std::thread::scope(|s| {
        let hs: Vec<_> = links
            .iter_mut()
            .map(|l| {
                let bytes = &bytes;
                s.spawn(move || {
                    let l = l.as_mut().ok_or_else(|| anyhow!("not connected"))?;
                    l.set_timeout(wait)?;
                    l.send(crate::net::CONTROL, bytes)?;
                    l.recv_json::<FromNode>()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("thread panicked"))))
            .collect()
    })
}

/// Run a federated query as `member` over `nodes`.
pub fn federate(
    space: &Space,
    member: &str,
    key: &SigningKey,
    scene: &str,
    nodes: &[String],
    sql: &str,
) -> Result<FederatedOutcome> {
    let cfg = FedConfig::load(&space.dir)?;
    let body = FederateBody {
        space: space.name.clone(),
        scene: scene.into(),
        member: member.into(),
        nodes: nodes.to_vec(),
        sql: sql.into(),
        nonce: kexin_engine::identity::nonce()?,
        time: kexin_engine::store::now_utc().1,
    };
    let env = Signed::sign(tag::FEDERATE, body, key)?;
    let session = hex::encode(session_id(tag::FEDERATE, &env)?);
    let mut out = FederatedOutcome {
        status: JointStatus::Aborted,
        columns: vec![],
        rows: vec![],
        accuracy: vec![],
        suppressed_groups: 0,
        code: None,
        rule: None,
        explanation: vec![],
        session,
        nodes: reports(nodes),
    };
    // Every node must have computed the same plan.
    let agree = |plans: &[(String, usize)]| plans.windows(2).all(|w| w[0] == w[1]);
    // An FHE-gated scene's rounds take seconds per total (see the FHE gate's allowance).
    let go_wait = space
        .scenes
        .get(scene)
        .filter(|s| s.fhe_gate.is_some())
        .map(|_| {
            cfg.round_timeout() * 4
                + kexin_engine::federated::rounds::fhe_gate::allowance(
                    kexin_mpc::fhe::limit::MAX_VALUES,
                )
        });
    let done = match converse(
        space,
        &cfg,
        key,
        ToNode::Federate(env),
        &mut out.nodes,
        agree,
        go_wait,
    ) {
        Answer::Finished(done) => done,
        Answer::Stopped { status, code, rule } => {
            (out.status, out.code, out.rule) = (status, Some(code), Some(rule));
            return Ok(out);
        }
    };
    let released: Vec<&JointRows> = done
        .iter()
        .filter_map(|r| match r {
            Ok(FromNode::Released { result, .. }) => Some(result),
            _ => None,
        })
        .collect();
    let consistent = released.windows(2).all(|w| w[0].digest() == w[1].digest());
    if released.len() == nodes.len() && consistent {
        let r = released[0].clone();
        out.status = JointStatus::Released;
        out.columns = r.columns;
        out.rows = r.rows;
        out.accuracy = r.accuracy;
        out.suppressed_groups = r.suppressed_groups;
        out.explanation = r.explanation;
    } else {
        out.code = Some(Code::FedAbort);
        out.rule = Some(abort_rule(&out.nodes));
    }
    Ok(out)
}

/// Every node, before it answers.
pub(crate) fn reports(nodes: &[String]) -> Vec<NodeReport> {
    nodes
        .iter()
        .map(|n| NodeReport {
            node: n.clone(),
            decision: NodeDecision::Unreachable,
            audit_seq: None,
            rule: None,
        })
        .collect()
}

/// How the nodes answered a signed request.
pub(crate) enum Answer {
    /// Every node was ready and their plans agreed; Go was sent. Each
    /// node's final reply, in node order.
    Finished(Vec<Result<FromNode>>),
    /// Nothing started (the ready nodes were cancelled): `refused` with the
    /// first refusal's code and rule, else `aborted`.
    Stopped {
        status: JointStatus,
        code: Code,
        rule: String,
    },
}

/// The researcher's side of a joint computation: send `request` to every
/// node (in parallel), collect Ready or refusals into `reports`, then send
/// Go to all, or Cancel to the ready ones when a node refused, did not
/// answer, or `agree` rejects the plans (digest, vector length).
pub(crate) fn converse(
    space: &Space,
    cfg: &FedConfig,
    key: &SigningKey,
    request: ToNode,
    reports: &mut [NodeReport],
    agree: impl Fn(&[(String, usize)]) -> bool,
    go_wait: Option<Duration>,
) -> Answer {
    let nodes: Vec<String> = reports.iter().map(|r| r.node.clone()).collect();
    let mut links: Vec<Option<Link>> = connect_all(space, cfg, key, &nodes)
        .into_iter()
        .map(Result::ok)
        .collect();
    // The nodes run their part first: allow the node's execution deadline.
    let compute = Duration::from_secs(space.limits.timeout_seconds) + cfg.round_timeout();
    let ready = exchange(&mut links, &request, compute);
    let mut plans = Vec::new();
    let mut refused: Option<(Code, String)> = None;
    for (i, r) in ready.iter().enumerate() {
        let rep = &mut reports[i];
        match r {
            Ok(FromNode::Ready { plan, len }) => {
                rep.decision = NodeDecision::Ready;
                plans.push((plan.clone(), *len));
            }
            Ok(FromNode::Refused {
                code,
                rule,
                audit_seq,
            }) => {
                rep.decision = NodeDecision::Refused;
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
                refused.get_or_insert((*code, rule.clone()));
            }
            _ => links[i] = None,
        }
    }
    let all_ready = plans.len() == nodes.len();
    if all_ready && agree(&plans) {
        let wait = go_wait.unwrap_or(cfg.round_timeout() * 4);
        let done = exchange(&mut links, &ToNode::Go, wait);
        record(reports, &done);
        return Answer::Finished(done);
    }
    for l in links.iter_mut().flatten() {
        let _ = l.send_json(&ToNode::Cancel);
    }
    // The nodes that were ready audit the cancellation; collect it.
    let done = exchange_replies(&mut links, cfg.round_timeout());
    record(reports, &done);
    match refused {
        Some((code, rule)) => Answer::Stopped {
            status: JointStatus::Refused,
            code,
            rule,
        },
        None => Answer::Stopped {
            status: JointStatus::Aborted,
            code: Code::FedAbort,
            rule: if all_ready {
                "the nodes computed different plans (their policies differ)".into()
            } else {
                "a node is unreachable or did not answer".into()
            },
        },
    }
}

/// Why a round that started released nothing: the first node's rule.
pub(crate) fn abort_rule(reports: &[NodeReport]) -> String {
    reports
        .iter()
        .find_map(|n| n.rule.clone())
        .unwrap_or_else(|| "a node went away before releasing".into())
}

/// Read one reply from every still-open link.
fn exchange_replies(links: &mut [Option<Link>], wait: Duration) -> Vec<Result<FromNode>> {
    links
        .iter_mut()
        .map(|l| {
            let l = l.as_mut().ok_or_else(|| anyhow!("not connected"))?;
            l.set_timeout(wait)?;
            l.recv_json::<FromNode>()
        })
        .collect()
}

fn record(nodes: &mut [NodeReport], replies: &[Result<FromNode>]) {
    for (rep, r) in nodes.iter_mut().zip(replies) {
        match r {
            Ok(
                FromNode::Released { audit_seq, .. }
                | FromNode::PsiResult { audit_seq, .. }
                | FromNode::Done { audit_seq }
                | FromNode::Accepted { audit_seq }
                | FromNode::Collected { audit_seq, .. },
            ) => {
                rep.decision = NodeDecision::Released;
                rep.audit_seq = Some(*audit_seq);
            }
            Ok(FromNode::Refused {
                rule, audit_seq, ..
            }) => {
                rep.decision = NodeDecision::Refused;
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
            }
            Ok(FromNode::Aborted { rule, audit_seq }) => {
                rep.decision = NodeDecision::Aborted;
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
            }
            Ok(_) => {}
            Err(_) => {
                if rep.decision == NodeDecision::Ready {
                    rep.decision = NodeDecision::NoAnswer;
                }
            }
        }
    }
}

/// The researcher's result of `kexin psi`.
#[derive(Debug, Clone, Serialize)]
pub struct PsiOutcome {
    pub status: JointStatus,
    /// The noisy overlap size (released by the first node).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub result: Option<PsiResult>,
    /// `--mode sum`: the noisy sum over the overlap (released by the second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<PsiResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub session: String,
    pub nodes: Vec<NodeReport>,
}

/// Run a PSI cardinality between two nodes as `member`.
pub fn psi(
    space: &Space,
    member: &str,
    key: &SigningKey,
    scene: &str,
    nodes: &[String],
    mode: PsiMode,
    column: Option<&str>,
) -> Result<PsiOutcome> {
    anyhow::ensure!(nodes.len() == 2, "--nodes names exactly two nodes for PSI");
    let cfg = FedConfig::load(&space.dir)?;
    let body = PsiBody {
        space: space.name.clone(),
        scene: scene.into(),
        member: member.into(),
        nodes: nodes.to_vec(),
        mode,
        column: column.map(str::to_string),
        nonce: kexin_engine::identity::nonce()?,
        time: kexin_engine::store::now_utc().1,
    };
    let env = Signed::sign(tag::PSI, body, key)?;
    let mut out = PsiOutcome {
        status: JointStatus::Aborted,
        result: None,
        sum: None,
        code: None,
        rule: None,
        session: hex::encode(session_id(tag::PSI, &env)?),
        nodes: reports(nodes),
    };
    let done = match converse(
        space,
        &cfg,
        key,
        ToNode::Psi(env),
        &mut out.nodes,
        |_| true,
        None,
    ) {
        Answer::Finished(done) => done,
        Answer::Stopped { status, code, rule } => {
            (out.status, out.code, out.rule) = (status, Some(code), Some(rule));
            return Ok(out);
        }
    };
    let released = |i: usize| match done.get(i) {
        Some(Ok(FromNode::PsiResult { result, .. })) => Some(result.clone()),
        _ => None,
    };
    let (count, second) = (released(0), released(1));
    let second_done = matches!(done.get(1), Some(Ok(FromNode::Done { .. })));
    let complete = match mode {
        PsiMode::Sum => count.is_some() && second.is_some(),
        PsiMode::Cardinality => count.is_some() && second_done,
    };
    if complete {
        out.status = JointStatus::Released;
        out.result = count;
        out.sum = second;
    } else {
        out.code = Some(Code::FedAbort);
        out.rule = Some(abort_rule(&out.nodes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses serialize to the strings scripts have always read.
    #[test]
    fn statuses_are_written_as_before() {
        let all = [
            JointStatus::Released,
            JointStatus::Refused,
            JointStatus::Aborted,
            JointStatus::Accepted,
            JointStatus::Partial,
        ];
        for s in all {
            assert_eq!(
                serde_json::to_string(&s).ok(),
                Some(format!("\"{}\"", s.as_str()))
            );
        }
        let all = [
            NodeDecision::Unreachable,
            NodeDecision::Ready,
            NodeDecision::Refused,
            NodeDecision::Released,
            NodeDecision::Aborted,
            NodeDecision::Accepted,
            NodeDecision::NoAnswer,
        ];
        for d in all {
            assert_eq!(
                serde_json::to_string(&d).ok(),
                Some(format!("\"{}\"", d.as_str()))
            );
        }
        assert_eq!(NodeDecision::NoAnswer.as_str(), "no answer");
    }
}
