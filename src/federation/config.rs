//! `federation.toml`, and who each node is: its address, member identity
//! and certified key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kexin_engine::policy::Space;
use serde::{Deserialize, Serialize};

use crate::net::Pins;

/// `<space>/federation.toml`: where each node listens and which member
/// identity it presents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FedConfig {
    /// How long a node waits for any one protocol step.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_seconds: u64,
    pub node: BTreeMap<String, NodeAddr>,
}

fn default_round_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    pub address: String,
    /// The member (role `node`) whose key the node presents on TLS.
    pub member: String,
}

impl FedConfig {
    pub fn path(space_dir: &Path) -> PathBuf {
        space_dir.join("federation.toml")
    }

    pub fn load(space_dir: &Path) -> Result<FedConfig> {
        let p = Self::path(space_dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (written by `kexin gen`; lists each node's address)",
                p.display()
            )
        })?;
        let cfg: FedConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        anyhow::ensure!(
            (1..=600).contains(&cfg.round_timeout_seconds),
            "round_timeout_seconds must be 1..=600"
        );
        Ok(cfg)
    }

    pub(crate) fn round_timeout(&self) -> Duration {
        Duration::from_secs(self.round_timeout_seconds)
    }

    /// The node whose TLS identity is `member` (with the `node` role).
    pub(crate) fn node_of(&self, member: &str, role: &str) -> Option<String> {
        if role != kexin_engine::identity::Role::Node.as_str() {
            return None;
        }
        self.node
            .iter()
            .find(|(_, a)| a.member == member)
            .map(|(n, _)| n.clone())
    }

    pub(crate) fn addr(&self, node: &str) -> Result<&NodeAddr> {
        self.node
            .get(node)
            .ok_or_else(|| anyhow!("federation.toml has no node {node:?}"))
    }
}

/// Node `node`'s federation file and its member key as this machine holds
/// them (`keys/<member>.key`): what acting as the node needs.
pub fn node_identity(space_dir: &Path, node: &str) -> Result<(FedConfig, SigningKey)> {
    let cfg = FedConfig::load(space_dir)?;
    let member = cfg.addr(node)?.member.clone();
    let me = crate::members::load_key(space_dir, &member, None)?;
    Ok((cfg, me))
}

/// Every member with a valid certificate in the registry, by key.
pub fn pins(space: &Space) -> Result<Pins> {
    let view = kexin_engine::registry::View::open(space)?;
    let mut pins = Pins::default();
    for m in space.members.values() {
        if let Ok((key, cert)) = view.member_key(&m.name) {
            pins.insert(&m.name, cert.body.role.as_str(), &key);
        }
    }
    // Individuals connect to contribute (`kexin contribute`).
    for p in view.individuals()? {
        if let Ok((key, cert)) = view.member_key(&p) {
            pins.insert(&p, cert.body.role.as_str(), &key);
        }
    }
    Ok(pins)
}

/// The certified key of a node's member identity.
pub(crate) fn node_key(space: &Space, cfg: &FedConfig, node: &str) -> Result<VerifyingKey> {
    let a = cfg.addr(node)?;
    let view = kexin_engine::registry::View::open(space)?;
    let (key, cert) = view
        .member_key(&a.member)
        .map_err(|e| anyhow!("node {node}: member {}: {e}", a.member))?;
    anyhow::ensure!(
        cert.body.role == kexin_engine::identity::Role::Node
            && space
                .members
                .get(&a.member)
                .is_some_and(|m| m.nodes.iter().any(|n| n == node)),
        "member {} is not certified as node {node}",
        a.member
    );
    Ok(key)
}
