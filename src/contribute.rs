//! The client sides of individuals' contributions: `kexin contribute` (a
//! person's Prio3 report, one share to each aggregator) and `kexin collect`
//! (a researcher's request for the batch total).
//!
//! ```text
//! person ──Contribute(signed, share 0)──▶ leader     each: grant, freshness,
//!        ──Contribute(signed, share 1)──▶ helper     shares decode; stored
//! researcher ──Collect(signed)──▶ both ──Ready──▶ Go
//!   aggregators: round 0 verify-key halves and report lists
//!                round 1 verifier shares (the proofs are checked on shares)
//!                round 2 aggregate shares (+ noise shares under DP)
//! researcher ◀──Collected(batch total) or Refused (KX-BATCH)── both
//! ```

use anyhow::{Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::Code;
use kexin_engine::contribution::{
    self as kc, BatchResult, CollectBody, ContributionBody, encode_b64,
};
use kexin_engine::federated::session_id;
use kexin_engine::identity::{Signed, nonce, tag};
use kexin_engine::policy::Space;
use serde::Serialize;

use crate::federation::{
    Answer, FedConfig, FromNode, JointStatus, NodeDecision, NodeReport, ToNode, connect_all,
    converse, reports,
};

/// What `kexin contribute` reports. The JSON shape is a contract.
#[derive(Debug, Clone, Serialize)]
pub struct ContributeOutcome {
    /// `accepted` (both aggregators stored their share), `refused`, or
    /// `partial` (one aggregator stored it: the report is never counted).
    pub status: JointStatus,
    pub scene: String,
    /// The report's nonce (hex), the same at both aggregators.
    pub report: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub nodes: Vec<NodeReport>,
}

impl ContributeOutcome {
    pub fn exit_status(&self) -> i32 {
        self.status.exit_status()
    }
}

/// Split `value` into a Prio3 report and send each aggregator its share.
pub fn contribute(
    space: &Space,
    person: &str,
    key: &SigningKey,
    scene: &str,
    value: &str,
) -> Result<ContributeOutcome> {
    let sc = space
        .scenes
        .get(scene)
        .ok_or_else(|| anyhow!("no scene {scene:?} in space.toml"))?;
    let mut out = ContributeOutcome {
        status: JointStatus::Refused,
        scene: scene.into(),
        report: String::new(),
        code: None,
        rule: None,
        nodes: vec![],
    };
    let Some(c) = sc.contribution.as_ref() else {
        out.code = Some(Code::Scene);
        out.rule = Some("the scene takes no contributions".into());
        return Ok(out);
    };
    out.nodes = reports(&c.aggregators);
    let m = match kc::measurement(c, value) {
        Ok(m) => m,
        Err(e) => {
            let r = e.as_refusal();
            out.code = Some(r.code);
            out.rule = Some(r.rule.into());
            return Ok(out);
        }
    };
    let report = kc::vdaf(c)?.shard(&kc::context(&space.name, scene), m)?;
    out.report = hex::encode(report.nonce);
    let cfg = FedConfig::load(&space.dir)?;
    let mut links = connect_all(space, &cfg, key, &c.aggregators);
    let mut accepted = 0;
    for (i, link) in links.iter_mut().enumerate() {
        let rep = &mut out.nodes[i];
        let Ok(link) = link else { continue };
        let body = ContributionBody {
            space: space.name.clone(),
            scene: scene.into(),
            person: person.into(),
            node: c.aggregators[i].clone(),
            report: hex::encode(report.nonce),
            public_share: encode_b64(&report.public_share),
            input_share: encode_b64(&report.input_shares[i]),
            nonce: nonce()?,
            time: kexin_engine::store::now_utc().1,
        };
        let env = Signed::sign(tag::CONTRIBUTE, body, key)?;
        link.set_timeout(cfg.round_timeout())?;
        link.send_json(&ToNode::Contribute(env))?;
        match link.recv_json::<FromNode>() {
            Ok(FromNode::Accepted { audit_seq }) => {
                rep.decision = NodeDecision::Accepted;
                rep.audit_seq = Some(audit_seq);
                accepted += 1;
            }
            Ok(FromNode::Refused { code, rule, .. }) => {
                rep.decision = NodeDecision::Refused;
                rep.rule = Some(rule.clone());
                out.code.get_or_insert(code);
                out.rule.get_or_insert(rule);
            }
            _ => rep.decision = NodeDecision::NoAnswer,
        }
    }
    out.status = match accepted {
        2 => JointStatus::Accepted,
        1 => JointStatus::Partial,
        _ => JointStatus::Refused,
    };
    if accepted < 2 && out.rule.is_none() {
        out.code = Some(Code::FedAbort);
        out.rule = Some("an aggregator is unreachable or did not answer".into());
    }
    Ok(out)
}

/// What `kexin collect` reports. The JSON shape is a contract.
#[derive(Debug, Clone, Serialize)]
pub struct CollectOutcome {
    /// `released`, `refused` or `aborted`.
    pub status: JointStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<BatchResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub session: String,
    pub nodes: Vec<NodeReport>,
}

impl CollectOutcome {
    pub fn exit_status(&self) -> i32 {
        self.status.exit_status()
    }
}

/// Collect the open batch of a contribution scene as researcher `member`.
pub fn collect(
    space: &Space,
    member: &str,
    key: &SigningKey,
    scene: &str,
) -> Result<CollectOutcome> {
    let sc = space
        .scenes
        .get(scene)
        .ok_or_else(|| anyhow!("no scene {scene:?} in space.toml"))?;
    let c = sc
        .contribution
        .as_ref()
        .ok_or_else(|| anyhow!("scene {scene:?} takes no contributions"))?;
    let cfg = FedConfig::load(&space.dir)?;
    let body = CollectBody {
        space: space.name.clone(),
        scene: scene.into(),
        member: member.into(),
        nodes: c.aggregators.to_vec(),
        nonce: nonce()?,
        time: kexin_engine::store::now_utc().1,
    };
    let env = Signed::sign(tag::COLLECT, body, key)?;
    let mut out = CollectOutcome {
        status: JointStatus::Aborted,
        result: None,
        code: None,
        rule: None,
        session: hex::encode(session_id(tag::COLLECT, &env)?),
        nodes: reports(&c.aggregators),
    };
    let done = match converse(
        space,
        &cfg,
        key,
        ToNode::Collect(env),
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
    let mut results = Vec::new();
    for r in &done {
        match r {
            Ok(FromNode::Collected { result, .. }) => results.push(result.clone()),
            Ok(FromNode::Refused { code, rule, .. }) => {
                out.status = JointStatus::Refused;
                out.code.get_or_insert(*code);
                out.rule.get_or_insert(rule.clone());
            }
            _ => {}
        }
    }
    if out.status == JointStatus::Refused {
        return Ok(out);
    }
    if results.len() == 2 && results[0] == results[1] {
        out.status = JointStatus::Released;
        out.result = results.pop();
    } else {
        out.code = Some(Code::FedAbort);
        out.rule = Some(crate::federation::abort_rule(&out.nodes));
    }
    Ok(out)
}
