//! Node processes on loopback for the federation and contribution tests:
//! a generated space with its own ports, `kexin node` children killed on
//! drop, and the researcher's commands.

#![allow(dead_code, reason = "used by some test areas only")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kexin");

/// A generated space with its own loopback ports, and the node processes
/// started on it (killed on drop).
pub struct Federation {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
    pub children: Vec<(String, Child)>,
}

impl Drop for Federation {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `kexin node` for `name` and wait for its `ready` line.
pub fn start_node(
    dir: &Path,
    name: &str,
    listen: Option<&str>,
) -> (Child, impl Iterator<Item = String> + Send + 'static) {
    let (child, lines, _) = start_node_with(dir, name, listen, &[]);
    (child, lines)
}

/// The addresses of a node's front ends, as it printed them.
#[derive(Debug, Default)]
pub struct Fronts {
    /// `--http`: `host:port` of the HTTP API.
    pub api: Option<String>,
    /// `--flight`: `host:port` of Flight SQL.
    pub flight: Option<String>,
}

/// [`start_node`] with more arguments; also the front ends' addresses
/// (`--http`, `--flight`).
pub fn start_node_with(
    dir: &Path,
    name: &str,
    listen: Option<&str>,
    extra: &[&str],
) -> (Child, impl Iterator<Item = String> + Send + 'static, Fronts) {
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--space", path(dir), "--node", name])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(l) = listen {
        cmd.args(["--listen", l]);
    }
    let mut child = cmd.spawn().expect("start node");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines().map_while(Result::ok);
    let first = lines.next().unwrap_or_default();
    assert!(
        first.contains("listening on"),
        "node {name} did not start: {first}"
    );
    let mut fronts = Fronts::default();
    let mut next = lines.next().unwrap_or_default();
    loop {
        if let Some((_, addr)) = next.split_once(" api on https://") {
            fronts.api = Some(addr.trim().to_string());
        } else if let Some((_, addr)) = next.split_once(" flight on grpc+tls://") {
            fronts.flight = Some(addr.trim().to_string());
        } else {
            break;
        }
        next = lines.next().unwrap_or_default();
    }
    assert!(next.contains(" ready on "), "node {name} not ready: {next}");
    (child, lines, fronts)
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

impl Federation {
    /// A space with `hospitals` nodes, a `timeout`-second round deadline,
    /// and the nodes in `start` running.
    pub fn new(hospitals: usize, timeout: u64, start: &[&str]) -> Federation {
        let dir = super::generated_space(hospitals, 600, 11);
        let ports = free_ports(hospitals + 1);
        let mut toml = format!("round_timeout_seconds = {timeout}\n");
        for h in 1..=hospitals {
            toml.push_str(&format!(
                "[node.h{h}]\naddress = \"127.0.0.1:{}\"\nmember = \"node-h{h}\"\n",
                ports[h - 1]
            ));
        }
        std::fs::write(dir.join("federation.toml"), toml).expect("write federation.toml");
        let mut f = Federation {
            dir,
            ports,
            children: vec![],
        };
        for n in start {
            f.start(n, None);
        }
        f
    }

    pub fn addr(&self, node: &str) -> String {
        let h: usize = node[1..].parse().expect("node number");
        format!("127.0.0.1:{}", self.ports[h - 1])
    }

    /// Start node `name` (on `listen`, default its federation address) and
    /// wait until it takes requests.
    pub fn start(&mut self, name: &str, listen: Option<&str>) {
        let (child, rest) = start_node(&self.dir, name, listen);
        // Keep reading what the node prints, so that it never writes to a
        // closed pipe.
        std::thread::spawn(move || rest.count());
        self.children.push((name.to_string(), child));
    }

    /// Start node `name` with its HTTP API on a free loopback port;
    /// returns the API's address.
    pub fn start_api(&mut self, name: &str) -> String {
        self.start_fronts(name)
            .api
            .expect("the node printed its API address")
    }

    /// Start node `name` with its HTTP API and Flight SQL on free loopback
    /// ports.
    pub fn start_fronts(&mut self, name: &str) -> Fronts {
        let (child, rest, fronts) = start_node_with(
            &self.dir,
            name,
            None,
            &["--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"],
        );
        std::thread::spawn(move || rest.count());
        self.children.push((name.to_string(), child));
        fronts
    }

    pub fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.children {
            if n == name {
                c.kill().expect("kill");
                c.wait().expect("wait");
            }
        }
    }

    /// `kexin federate` as alice (the exact joint scenes' requester).
    pub fn federate(&self, scene: &str, nodes: &str, sql: &str) -> (i32, Value) {
        self.federate_as("alice", scene, nodes, sql)
    }

    pub fn federate_as(&self, actor: &str, scene: &str, nodes: &str, sql: &str) -> (i32, Value) {
        let out = Command::new(BIN)
            .args([
                "federate",
                "--space",
                path(&self.dir),
                "--scene",
                scene,
                "--as",
                actor,
                "--nodes",
                nodes,
                "--format",
                "json",
                sql,
            ])
            .output()
            .expect("run federate");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "federate printed no JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// `kexin psi` as erin between h1 and h2 under `joint-diabetes-dp`.
    pub fn psi(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "psi",
            "--space",
            path(&self.dir),
            "--scene",
            "joint-diabetes-dp",
            "--as",
            "erin",
            "--nodes",
            "h1,h2",
        ];
        args.extend_from_slice(extra);
        Command::new(BIN).args(args).output().expect("run psi")
    }

    /// The node's audit entries (as JSON).
    pub fn audit(&self, node: &str) -> Vec<Value> {
        let out = Command::new(BIN)
            .args([
                "audit",
                "list",
                "--local",
                "--space",
                path(&self.dir),
                "--node",
                node,
            ])
            .output()
            .expect("audit list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The entry of `session` in node's audit log.
    pub fn entry(&self, node: &str, session: &str) -> Value {
        self.audit(node)
            .into_iter()
            .find(|e| e["session"] == session)
            .unwrap_or_else(|| panic!("{node} has no audit entry for session {session}"))
    }

    pub fn verify_logs(&self, nodes: &[&str]) {
        for n in nodes {
            let ok = Command::new(BIN)
                .args([
                    "audit",
                    "verify",
                    "--local",
                    "--space",
                    path(&self.dir),
                    "--node",
                    n,
                ])
                .status()
                .expect("verify");
            assert!(ok.success(), "audit log of {n} verifies");
        }
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Writer `w` (carol for even `w`, dave for odd) offers contracts on h1,
/// each with its own terms, through `send` until `stop` is set or `send`
/// gives up (`None`: the node went away); the ids the node acknowledged.
pub fn offer_until_stopped(
    space: &kexin_engine::policy::Space,
    w: u64,
    stop: &std::sync::atomic::AtomicBool,
    mut send: impl FnMut(
        &str,
        kexin_engine::identity::Signed<kexin_engine::contract::Terms>,
    ) -> Option<String>,
) -> Vec<String> {
    let holder = if w.is_multiple_of(2) { "carol" } else { "dave" };
    let key = kexin::members::load_key(&space.dir, holder, None).expect("key");
    let mut acknowledged = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let terms = kexin::members::offer(
            space,
            "h1",
            holder,
            &key,
            "alice",
            "diabetes-2027",
            kexin::members::Offer {
                max_queries: w * 100_000 + n,
                ..Default::default()
            },
        )
        .expect("sign");
        match send(holder, terms) {
            Some(id) => acknowledged.push(id),
            None => break,
        }
    }
    acknowledged
}
