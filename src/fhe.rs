//! The FHE key holder's key files (`kexin fhe keygen`) and how the other
//! nodes read them.
//!
//! `<space>/fhe/<node>/` holds:
//! - `client.key`: the secret key (owner-only permissions; only the key
//!   holder node reads it);
//! - `public.key`: the compact public key contributors encrypt with;
//! - `server.key`: the server key the aggregator computes with;
//! - `keys.json`: the key holder node's signed statement of the two public
//!   files' SHA-256, so a node never encrypts under, or computes with, a key
//!   someone swapped in.
//!
//! Every file is a sealed tfhe object (`kexin_mpc::fhe`): versioned, size
//! limited and checked for conformance with the parameter set when read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kexin_engine::Code;
use kexin_engine::identity::{Signed, tag};
use kexin_engine::policy::Space;
use kexin_mpc::fhe::{Aggregator, Encryptor, KeyHolder, limit};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the key holder signs about its public keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FheKeysBody {
    pub space: String,
    pub node: String,
    pub public_key_sha256: String,
    pub server_key_sha256: String,
    pub created: String,
}

/// What `kexin fhe keygen` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub node: String,
    pub dir: String,
    pub public_key_bytes: usize,
    pub server_key_bytes: usize,
    pub seconds: f64,
}

pub fn dir(space_dir: &Path, node: &str) -> PathBuf {
    space_dir.join("fhe").join(node)
}

/// Generate node `node`'s FHE keys, signed with the node's member key.
pub fn keygen(space: &Space, node: &str, key: &SigningKey) -> Result<Generated> {
    let t = std::time::Instant::now();
    let d = dir(&space.dir, node);
    std::fs::create_dir_all(&d)?;
    let (holder, public) = KeyHolder::generate()?;
    let pk = public.compact_bytes()?;
    let sk = public.server_bytes()?;
    let secret = holder.to_bytes()?;
    write_private(&d.join("client.key"), &secret)?;
    std::fs::write(d.join("public.key"), &pk)?;
    std::fs::write(d.join("server.key"), &sk)?;
    let body = FheKeysBody {
        space: space.name.clone(),
        node: node.into(),
        public_key_sha256: hex::encode(Sha256::digest(&pk)),
        server_key_sha256: hex::encode(Sha256::digest(&sk)),
        created: kexin_engine::store::now_utc().1,
    };
    let env = Signed::sign(tag::FHE_KEYS, body, key)?;
    std::fs::write(d.join("keys.json"), serde_json::to_vec_pretty(&env)?)?;
    Ok(Generated {
        node: node.into(),
        dir: d.display().to_string(),
        public_key_bytes: pk.len(),
        server_key_bytes: sk.len(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(bytes)?;
    Ok(())
}

/// Do `node`'s keys exist?
pub fn exists(space_dir: &Path, node: &str) -> bool {
    let d = dir(space_dir, node);
    ["client.key", "public.key", "server.key", "keys.json"]
        .iter()
        .all(|f| d.join(f).is_file())
}

/// The key holder's signed statement, verified with its certified key.
pub fn statement(
    space: &Space,
    holder_key: &ed25519_dalek::VerifyingKey,
    node: &str,
) -> Result<FheKeysBody> {
    let d = dir(&space.dir, node);
    let text = std::fs::read_to_string(d.join("keys.json"))
        .with_context(|| format!("node {node} has published no FHE keys (kexin fhe keygen)"))?;
    let env: Signed<FheKeysBody> = Signed::from_json(&text, Code::Auth)?;
    env.verify(tag::FHE_KEYS, holder_key, Code::Auth)?;
    anyhow::ensure!(
        env.body.space == space.name && env.body.node == node,
        "the FHE key statement is for another space or node"
    );
    Ok(env.body)
}

/// Read one of the key holder's public files, checked against its signed
/// statement (signature by the node's certified key, then the digest).
fn verified(
    space: &Space,
    holder_key: &ed25519_dalek::VerifyingKey,
    node: &str,
    file: &str,
    max: u64,
) -> Result<Vec<u8>> {
    let st = statement(space, holder_key, node)?;
    let path = dir(&space.dir, node).join(file);
    let len = std::fs::metadata(&path)?.len();
    anyhow::ensure!(len <= max + 64, "{file} is over its size limit");
    let bytes = std::fs::read(&path)?;
    let want = if file == "public.key" {
        &st.public_key_sha256
    } else {
        &st.server_key_sha256
    };
    anyhow::ensure!(
        hex::encode(Sha256::digest(&bytes)) == *want,
        "{file} does not match the key holder's signed statement"
    );
    Ok(bytes)
}

/// The contributor's side: the key holder's compact public key.
pub fn encryptor(
    space: &Space,
    holder_key: &ed25519_dalek::VerifyingKey,
    node: &str,
) -> Result<Encryptor> {
    let b = verified(space, holder_key, node, "public.key", limit::PUBLIC_KEY)?;
    Ok(Encryptor::from_bytes(&b)?)
}

/// The aggregator's side: the key holder's server key.
pub fn aggregator(
    space: &Space,
    holder_key: &ed25519_dalek::VerifyingKey,
    node: &str,
) -> Result<Aggregator> {
    let b = verified(space, holder_key, node, "server.key", limit::SERVER_KEY)?;
    Ok(Aggregator::from_bytes(&b, limit::SERVER_KEY)?)
}

/// The key holder's own secret key.
pub fn key_holder(space_dir: &Path, node: &str) -> Result<KeyHolder> {
    let b = std::fs::read(dir(space_dir, node).join("client.key"))
        .with_context(|| format!("node {node} has no FHE secret key (kexin fhe keygen)"))?;
    Ok(KeyHolder::from_bytes(&b)?)
}
