//! Individuals' contributions (Prio3) at an aggregator node: who may
//! contribute, what is stored, how a batch is closed, and what the audit
//! log says (never a value).
//!
//! A person signs one [`ContributionBody`] per aggregator: each carries the
//! same report nonce and public share, and only that aggregator's input
//! share. An aggregator accepts it when the person is a certified
//! individual with a current grant for the scene, the request is fresh and
//! not replayed, the shares decode, and the person has no contribution in
//! the open batch yet. Collection ([`CollectBody`]) is a researcher's
//! signed request to both aggregators; see `kexin collect`.

use std::time::Duration;

use base64::Engine;
use kexin_mpc::prio3::{Measure, Stored, Vdaf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditEntry;
use crate::error::{Code, Error, Result};
use crate::identity::{Signed, tag};
use crate::node::{Node, refusal};
use crate::policy::{Contribution, ContributionKind, Scene};
use crate::store::now_utc;

/// One person's report, as one aggregator receives it, signed with
/// [`tag::CONTRIBUTE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContributionBody {
    pub space: String,
    pub scene: String,
    pub person: String,
    /// The aggregator node this copy is for.
    pub node: String,
    /// The report's Prio3 nonce (16 bytes, hex): the same at both.
    pub report: String,
    /// Prio3 public share and this aggregator's input share (base64).
    pub public_share: String,
    pub input_share: String,
    pub nonce: String,
    pub time: String,
}

/// A researcher's request to collect a scene's open batch, signed with
/// [`tag::COLLECT`] and sent to both aggregators (leader first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectBody {
    pub space: String,
    pub scene: String,
    pub member: String,
    pub nodes: Vec<String>,
    pub nonce: String,
    pub time: String,
}

/// A released batch: the sum (or per-bucket counts) and how many reports
/// it holds. The JSON shape is a contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub scene: String,
    /// `sum` or `histogram`.
    pub kind: String,
    /// Bucket labels (histograms) or `["sum"]`.
    pub labels: Vec<String>,
    pub values: Vec<i64>,
    /// Valid reports in the batch (withheld under DP: an exact count would
    /// tell whether one person contributed).
    pub reports: Option<usize>,
    /// Reports whose validity proof failed (not counted; withheld under
    /// DP).
    pub rejected: Option<usize>,
    /// DP: ε of the discrete Laplace noise in `values`, and the 95%
    /// half-width of each value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_width_95: Option<f64>,
    pub explanation: Vec<String>,
}

impl BatchResult {
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(
            serde_json::to_vec(&(&self.labels, &self.values, self.reports)).unwrap_or_default(),
        ))
    }
}

/// The Prio3 instance of a contribution scene.
pub fn vdaf(c: &Contribution) -> Result<Vdaf> {
    let m = match &c.kind {
        ContributionKind::Sum { max } => Measure::Sum { max: *max },
        ContributionKind::Histogram { buckets } => Measure::Histogram {
            buckets: buckets.len(),
        },
    };
    Vdaf::new(m).map_err(|_| Error::internal("contribution measure"))
}

/// The Prio3 application context: binds reports to the space and scene.
pub fn context(space: &str, scene: &str) -> Vec<u8> {
    format!("kexin/contribution/v1\0{space}\0{scene}").into_bytes()
}

/// The measurement a person's `--value` stands for: the value of a sum, or
/// the index of a bucket label.
pub fn measurement(c: &Contribution, value: &str) -> Result<u64> {
    let bad = || refusal(Code::Contribution, "the value is outside the scene's range");
    match &c.kind {
        ContributionKind::Sum { max } => {
            let v: u64 = value.trim().parse().map_err(|_| bad())?;
            if v > *max {
                return Err(bad());
            }
            Ok(v)
        }
        ContributionKind::Histogram { buckets } => buckets
            .iter()
            .position(|b| b == value.trim())
            .map(|i| i as u64)
            .ok_or_else(bad),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Bytes of a base64 field (refused as a malformed report otherwise).
pub fn decode_b64(s: &str) -> Result<Vec<u8>> {
    b64()
        .decode(s)
        .map_err(|_| refusal(Code::Contribution, "the report is malformed"))
}

pub fn encode_b64(b: &[u8]) -> String {
    b64().encode(b)
}

/// The 95% half-width of the two aggregators' discrete Laplace noise (one
/// Laplace of scale sensitivity/ε in all).
pub fn half_width(c: &Contribution, eps: f64) -> f64 {
    let sens = match &c.kind {
        ContributionKind::Sum { max } => *max as f64,
        ContributionKind::Histogram { .. } => 1.0,
    };
    sens / eps * (1.0f64 / 0.05).ln()
}

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
        if cert.body.role != "individual" {
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
            "contribution",
            "accepted",
            &self.space.policy_digest,
        );
        let (stored, _) = match checked {
            Ok(s) => s,
            Err(err) => {
                if let Some(r) = err.as_refusal_parts() {
                    e.decision = "refused".into();
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
            e.decision = "refused".into();
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
        if cert.body.role != "researcher" {
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
            "collection",
            "released",
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
                e.decision = if code == Code::FedAbort {
                    "aborted"
                } else {
                    "refused"
                }
                .into();
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

/// This aggregator's share of the batch's discrete Laplace noise (one
/// integer per aggregate entry; the two shares add up to one discrete
/// Laplace of scale sensitivity/ε), or nothing for an exact scene.
pub fn noise_share(c: &Contribution) -> Result<Vec<i64>> {
    let Some(eps) = c.epsilon else {
        return Ok(vec![]);
    };
    let (sens, len) = match &c.kind {
        ContributionKind::Sum { max } => (*max as f64, 1),
        ContributionKind::Histogram { buckets } => (1.0, buckets.len()),
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(Error::internal)?;
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
    (0..len)
        .map(|_| kexin_mpc::noise::laplace_share(&mut rng, sens / eps, 2).map_err(Error::internal))
        .collect()
}

/// How long a collection may take per report at most (verification is
/// about 0.1 ms per report; the rest is transport).
pub fn collection_allowance(reports: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(reports as u64 / 10)
}
