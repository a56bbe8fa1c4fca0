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
    dir
}

/// Node h1 of the space in `dir`.
pub async fn open_h1(dir: &Path) -> Node {
    let space = Arc::new(Space::load(dir).expect("space loads"));
    Node::open(space, "h1").await.expect("node opens")
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
