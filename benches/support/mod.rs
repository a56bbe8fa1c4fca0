//! What the benches that run node servers share.

use std::sync::Arc;

use kexin::federation::{FedConfig, NodeServer};
use kexin_engine::policy::Space;

/// Start h1..h3 on ephemeral loopback ports (written to federation.toml).
pub fn start_nodes(space: &Arc<Space>) {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut toml = String::from("round_timeout_seconds = 120\n");
    for (i, l) in listeners.iter().enumerate() {
        toml.push_str(&format!(
            "[node.h{n}]\naddress = \"{}\"\nmember = \"node-h{n}\"\n",
            l.local_addr().expect("addr"),
            n = i + 1
        ));
    }
    std::fs::write(FedConfig::path(&space.dir), toml).expect("federation.toml");
    for (i, l) in listeners.into_iter().enumerate() {
        let server = Arc::new(
            NodeServer::open(Arc::clone(space), &format!("h{}", i + 1), None).expect("node"),
        );
        std::thread::spawn(move || server.serve(l, || ()));
    }
}
