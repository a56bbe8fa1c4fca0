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
//! signed request to both aggregators; see `kexin collect`. The node's
//! side (accept, open a batch, audit a collection) is in `node/contributions.rs`;
//! the collection's rounds in `federated/rounds/collect.rs`.

use std::time::Duration;

use base64::Engine;
use kexin_mpc::prio3::{Measure, Vdaf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::closed::closed_set;
use crate::error::{Code, Error, Result};
use crate::policy::{Contribution, ContributionKind};

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

closed_set! {
    /// What a released batch totals.
    BatchKind {
        /// The sum of the reports' values.
        Sum => "sum",
        /// The count of reports per bucket.
        Histogram => "histogram",
    }
}

impl From<&ContributionKind> for BatchKind {
    fn from(k: &ContributionKind) -> BatchKind {
        match k {
            ContributionKind::Sum { .. } => BatchKind::Sum,
            ContributionKind::Histogram { .. } => BatchKind::Histogram,
        }
    }
}

/// A released batch: the sum (or per-bucket counts) and how many reports
/// it holds. The JSON shape is a contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub scene: String,
    pub kind: BatchKind,
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
    let bad = || Error::refused(Code::Contribution, "the value is outside the scene's range");
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
        .map_err(|_| Error::refused(Code::Contribution, "the report is malformed"))
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
