//! Helpers shared by the integration test binaries.

pub mod nodes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kexin_engine::node::{Node, Outcome, QueryRequest};
use kexin_engine::policy::Space;

/// A synthetic space generated quietly into a temporary directory that
/// outlives the test binary's tests (each binary keeps one in a `OnceLock`).
pub fn generated_space(hospitals: usize, patients: usize, seed: u64) -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    kexin::synth::generate(
        &dir,
        &kexin::synth::GenOptions {
            hospitals,
            patients,
            seed,
            csv: false,
            quiet: true,
            fhe_keys: false,
        },
    )
    .expect("generate");
    // These tests measure no time, and padding every answer to half a
    // second would only make them slow: the padding has its own unit test
    // and the command-line tests keep the example's quantum.
    let policy = dir.join("space.toml");
    let text = std::fs::read_to_string(&policy).expect("space.toml");
    let text = text.replace("response_quantum_ms = 500", "response_quantum_ms = 0");
    std::fs::write(&policy, text).expect("space.toml");
    dir
}

/// Node h1 of the space in `dir`.
pub async fn open_h1(dir: &Path) -> Node {
    let space = Arc::new(Space::load(dir).expect("space loads"));
    Node::open(space, "h1").await.expect("node opens")
}

/// `member` approves the UDF module `bytes` for `scene` on `node`, signed
/// with the member's key file in the space.
pub fn approve(
    node: &Node,
    scene: &str,
    bytes: &[u8],
    member: &str,
) -> kexin_engine::Result<kexin_engine::node::Registration> {
    let space = node.space();
    let key = kexin::members::load_key(&space.dir, member, None).expect("member key");
    let env = kexin::members::udf_approval(space, node.name(), member, &key, scene, bytes)
        .expect("sign the approval");
    node.approve_udf(&env, bytes)
}

/// A researcher's query on `node`.
pub async fn ask(node: &Node, scene: &str, actor: &str, sql: &str) -> Outcome {
    node.query(&QueryRequest {
        scene: scene.into(),
        actor: actor.into(),
        sql: sql.into(),
        contract: None,
    })
    .await
}

/// The space's other nodes opened in this process, standing in for their
/// node servers: every DP charge a node makes is recorded in their ledgers
/// too, through the same [`Node::accept_peer_charge`] the servers call.
#[derive(Debug)]
#[allow(dead_code, reason = "used by some test areas only")]
pub struct LocalPeers {
    me: String,
    peers: Vec<Node>,
}

impl kexin_engine::ledger::PeerLedger for LocalPeers {
    fn replicate(
        &self,
        charge: &kexin_engine::ledger::Charge,
        skip: &[String],
    ) -> Result<(), &'static str> {
        for p in self
            .peers
            .iter()
            .filter(|p| !skip.iter().any(|s| s == p.name()))
        {
            p.accept_peer_charge(&self.me, charge)
                .map_err(|_| "another node's ledger cannot cover the charge")?;
        }
        Ok(())
    }
}

/// Node `name` of the space in `dir`, with the space's other nodes as its
/// in-process peers.
#[allow(dead_code, reason = "used by some test areas only")]
pub async fn open_with_peers(dir: &Path, name: &str) -> Node {
    let space = Arc::new(Space::load(dir).expect("space loads"));
    let node = Node::open(Arc::clone(&space), name)
        .await
        .expect("node opens");
    let mut peers = Vec::new();
    for n in space.nodes.iter().filter(|n| *n != name) {
        peers.push(Node::open(Arc::clone(&space), n).await.expect("peer opens"));
    }
    node.set_peer_ledger(Arc::new(LocalPeers {
        me: name.to_string(),
        peers,
    }));
    node
}
