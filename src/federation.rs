//! Federation: the node server (`kexin node`), the researcher's side of a
//! federated query (`kexin federate`) and of a private set intersection
//! (`kexin psi`).
//!
//! ```text
//! researcher ──Federate(signed)──▶ every node     each: authenticate, compute
//!            ◀──Ready(plan digest)──               its partial under its policy
//! researcher ──Go──▶ every node
//!   nodes:  round 0  shares of the partial vector to every other node
//!           round 1  open the person count of every cell (among nodes)
//!           round 2  open the totals of the cells that pass the threshold
//! researcher ◀──Released(rows) or Aborted── every node (all must agree)
//! ```
//!
//! Each node audits the outcome under the same session digest. Any missing,
//! late, malformed, replayed or misattributed message aborts the round at
//! the node that sees it; the researcher gets rows only when every node
//! released the same rows.

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kexin_engine::contribution::{BatchResult, CollectBody, ContributionBody};
use kexin_engine::federated::{FederateBody, JointDecision, JointRows, PsiBody, session_id};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::node::{JointTrace, Node, QueryRequest};
use kexin_engine::policy::Space;
use kexin_engine::{Code, Refusal};
use kexin_mpc::aggregate::Aggregation;
use kexin_mpc::message::Message;
use serde::{Deserialize, Serialize};

use crate::net::{Link, MPC, Pins};

/// A request whose signer is not the member on the TLS link.
const OTHER_SIGNER: Refusal = Refusal::new(
    Code::Auth,
    "the request is signed by another member than the link's",
);

/// Connections a node serves at once (each holds a thread).
const MAX_CONNECTIONS: usize = 256;
/// Connections from one source address that may be in the TLS handshake
/// at once: idle or slow unauthenticated connections from one place cannot
/// take the node's connection slots from its peers.
const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// How long a TLS handshake (with the pinned member key) may take in all.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Authenticated connections one member other than a node may hold at
/// once: a researcher or an individual cannot take the node's connection
/// slots from the others, whatever address they come from.
const MAX_PER_MEMBER: usize = 8;
/// The same for a peer node, which holds one link per open session and
/// peer, and its witness and ledger calls.
const MAX_PER_NODE_MEMBER: usize = 96;

/// Which new connections a node takes: at most [`MAX_CONNECTIONS`] open,
/// at most [`MAX_HANDSHAKES_PER_SOURCE`] of them still in the handshake
/// from any one address, and once authenticated at most
/// [`MAX_PER_MEMBER`] per member ([`MAX_PER_NODE_MEMBER`] per peer node).
#[derive(Debug, Default)]
struct Admission {
    /// (open connections, handshakes in progress per source address)
    state: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
    /// Authenticated connections per member.
    members: Mutex<HashMap<String, usize>>,
}

impl Admission {
    fn enter(this: &Arc<Self>, source: std::net::IpAddr) -> Option<Ticket> {
        let mut s = this.state.lock().ok()?;
        let (open, handshaking) = &mut *s;
        let n = handshaking.get(&source).copied().unwrap_or(0);
        if *open >= MAX_CONNECTIONS || n >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *open += 1;
        handshaking.insert(source, n + 1);
        Some(Ticket {
            admission: Arc::clone(this),
            source,
            handshaking: true,
            member: None,
        })
    }
}

/// One admitted connection; dropping it frees its places.
#[derive(Debug)]
struct Ticket {
    admission: Arc<Admission>,
    source: std::net::IpAddr,
    handshaking: bool,
    /// The authenticated member whose place this connection holds.
    member: Option<String>,
}

impl Ticket {
    /// Take one of `member`'s places (its role sets how many it has);
    /// false when it holds them all, and the connection is then closed.
    fn authenticated(&mut self, member: &str, role: &str) -> bool {
        let cap = if role == "node" {
            MAX_PER_NODE_MEMBER
        } else {
            MAX_PER_MEMBER
        };
        let Ok(mut m) = self.admission.members.lock() else {
            return false;
        };
        let n = m.entry(member.to_string()).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        self.member = Some(member.to_string());
        true
    }

    fn handshake_over(&mut self) {
        if !std::mem::replace(&mut self.handshaking, false) {
            return;
        }
        if let Ok(mut s) = self.admission.state.lock()
            && let Some(n) = s.1.get_mut(&self.source)
        {
            *n -= 1;
            if *n == 0 {
                s.1.remove(&self.source);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_over();
        if let Some(member) = self.member.take()
            && let Ok(mut m) = self.admission.members.lock()
            && let Some(n) = m.get_mut(&member)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&member);
            }
        }
        if let Ok(mut s) = self.admission.state.lock() {
            s.0 -= 1;
        }
    }
}

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
        if role != "node" {
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
            pins.insert(&m.name, &cert.body.role, &key);
        }
    }
    // Individuals connect to contribute (`kexin contribute`).
    for p in view.individuals()? {
        if let Ok((key, cert)) = view.member_key(&p) {
            pins.insert(&p, &cert.body.role, &key);
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
        cert.body.role == "node"
            && space
                .members
                .get(&a.member)
                .is_some_and(|m| m.nodes.iter().any(|n| n == node)),
        "member {} is not certified as node {node}",
        a.member
    );
    Ok(key)
}

// ---------------------------------------------------------------- messages

/// Researcher → node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToNode {
    Federate(Signed<FederateBody>),
    Go,
    Cancel,
    Psi(Signed<PsiBody>),
    /// An individual's report for this aggregator.
    Contribute(Signed<ContributionBody>),
    /// A researcher collects a contribution scene's open batch.
    Collect(Signed<CollectBody>),
    /// Node → node: a DP charge to record before the sender computes.
    Charge(kexin_engine::ledger::Charge),
    /// Node → node: the sender's latest signed checkpoint, to witness.
    Witness {
        verifier: String,
        note: String,
    },
    /// Anyone → node: which checkpoint of `node` do you hold?
    Witnessed {
        node: String,
    },
}

/// Node → researcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromNode {
    Ready {
        plan: String,
        len: usize,
    },
    Refused {
        code: String,
        rule: String,
        audit_seq: Option<u64>,
    },
    Released {
        result: JointRows,
        audit_seq: u64,
    },
    Aborted {
        rule: String,
        audit_seq: Option<u64>,
    },
    PsiResult {
        result: PsiResult,
        audit_seq: u64,
    },
    /// The PSI party that supplied its blinded set and releases nothing.
    Done {
        audit_seq: u64,
    },
    /// A contribution stored in the open batch.
    Accepted {
        audit_seq: u64,
    },
    /// A collected batch.
    Collected {
        result: BatchResult,
        audit_seq: u64,
    },
    /// A peer's DP charge recorded here; what the requester has now spent
    /// under the scene.
    Charged {
        epsilon_spent: f64,
    },
    /// The witness's countersignature of a checkpoint it now holds.
    Cosigned {
        note: String,
    },
    /// The latest checkpoint of a node this node witnessed.
    Checkpoint {
        note: Option<String>,
    },
}

impl FromNode {
    /// A refusal with its fixed code and rule.
    pub(crate) fn refused(r: Refusal, audit_seq: Option<u64>) -> FromNode {
        FromNode::Refused {
            code: r.code.as_str().into(),
            rule: r.rule.into(),
            audit_seq,
        }
    }
}

/// What a PSI node ends with.
#[derive(Debug)]
enum PsiDone {
    /// The overlap size (the first node).
    Count(usize),
    /// The noisy sum on the payload grid (the second node, `--mode sum`).
    Sum(i64),
    /// The second node in cardinality mode.
    Nothing,
}

/// What `kexin psi` releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsiResult {
    pub mode: String,
    pub column: Option<String>,
    /// The noisy value (cardinality, or the sum over the intersection).
    pub value: f64,
    /// 95% interval of the noise.
    pub interval: [f64; 2],
    pub epsilon: f64,
    pub explanation: Vec<String>,
}

// ---------------------------------------------------------------- the node

/// How often a node server shows a grown log's checkpoint to its peers.
const WITNESS_INTERVAL: Duration = Duration::from_secs(5);

/// A running node: its engine, identity, peers and open sessions.
#[derive(Debug)]
pub struct NodeServer {
    node: Node,
    space: Arc<Space>,
    cfg: FedConfig,
    me: SigningKey,
    pins: Pins,
    rt: tokio::runtime::Runtime,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Contribution scenes being collected here: one collection of a batch
    /// at a time, so a batch is never released twice.
    collecting: Mutex<std::collections::HashSet<String>>,
    /// The FHE aggregator's server key (by key holder and key digest).
    fhe: Mutex<Option<(String, Arc<kexin_mpc::fhe::Aggregator>)>>,
}

#[derive(Debug)]
struct Session {
    /// The member identity of each party, by party index.
    members: Vec<String>,
    tx: Sender<Inbound>,
}

#[derive(Debug)]
enum Inbound {
    Message(Vec<u8>),
    /// A peer broke the transport rules (wrong identity for its index).
    Violation(&'static str),
}

impl NodeServer {
    /// Open node `name` of the space with its member key.
    pub fn open(space: Arc<Space>, name: &str, key: Option<&Path>) -> Result<NodeServer> {
        let cfg = FedConfig::load(&space.dir)?;
        let member = cfg.addr(name)?.member.clone();
        let me = crate::members::load_key(&space.dir, &member, key)?;
        let pins = pins(&space)?;
        anyhow::ensure!(
            node_key(&space, &cfg, name)? == me.verifying_key(),
            "the key is not the one certified for node {name}"
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let node = rt.block_on(Node::open(Arc::clone(&space), name))?;
        crate::ledger::NetLedger::new(Arc::clone(&space), cfg.clone(), me.clone(), name)
            .install(&node);
        Ok(NodeServer {
            node,
            space,
            cfg,
            me,
            pins,
            rt,
            sessions: Mutex::new(HashMap::new()),
            fhe: Mutex::new(None),
            collecting: Mutex::new(Default::default()),
        })
    }

    /// How long a node that is ready waits for the start signal: the other
    /// nodes may still be running their part (up to the query deadline).
    fn compute_allowance(&self) -> Duration {
        Duration::from_secs(self.space.limits.timeout_seconds) + self.cfg.round_timeout()
    }

    /// Serve forever on `listen` (one thread per connection).
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let tls = crate::net::server_config(&self.me, Arc::new(self.pins.clone()))?;
        let admission = Arc::new(Admission::default());
        // The peers keep this node's latest checkpoint (witnessing).
        let this = Arc::clone(&self);
        std::thread::spawn(move || {
            crate::witness::keep_witnessed(
                &this.space,
                &this.cfg,
                &this.me,
                &this.node,
                WITNESS_INTERVAL,
            )
        });
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(source) = tcp.peer_addr().map(|a| a.ip()) else {
                continue;
            };
            // Past a limit a connection is closed at once: no thread, no
            // handshake.
            let Some(ticket) = Admission::enter(&admission, source) else {
                tracing::warn!(
                    target: "kexin::node",
                    "connection refused: {MAX_CONNECTIONS} open or {MAX_HANDSHAKES_PER_SOURCE} handshakes from one source"
                );
                continue;
            };
            let this = Arc::clone(&self);
            let tls = Arc::clone(&tls);
            std::thread::spawn(move || {
                let mut ticket = ticket;
                if let Err(e) = this.connection(tcp, tls, &mut ticket) {
                    tracing::info!(target: "kexin::node", "connection closed: {e:#}");
                }
            });
        }
        Ok(())
    }

    /// One connection: the TLS handshake (its place in the handshake is
    /// given back whatever its outcome), one of the member's places, then
    /// the member's request.
    fn connection(
        &self,
        tcp: TcpStream,
        tls: Arc<rustls::ServerConfig>,
        ticket: &mut Ticket,
    ) -> Result<()> {
        let t = self.cfg.round_timeout();
        let accepted = Link::accept(tcp, tls, &self.pins, HANDSHAKE_TIMEOUT);
        ticket.handshake_over();
        let (mut link, (member, role)) = accepted?;
        if !ticket.authenticated(&member, &role) {
            tracing::warn!(
                target: "kexin::node",
                "connection refused: the member holds all its places ({MAX_PER_MEMBER}, nodes {MAX_PER_NODE_MEMBER})"
            );
            bail!("the member holds all its connection places");
        }
        link.set_timeout(t)?;
        link.set_write_timeout(t)?;
        let (kind, first) = link.recv()?;
        if kind == MPC {
            anyhow::ensure!(role == "node", "MPC messages come from nodes only");
            return self.peer_messages(link, &member, first);
        }
        let msg: ToNode = serde_json::from_slice(&first).context("control message")?;
        match msg {
            ToNode::Federate(env) => self.federate(link, &member, env),
            ToNode::Psi(env) => self.psi(link, &member, env),
            ToNode::Contribute(env) => self.contribute(link, &member, env),
            ToNode::Collect(env) => self.collect(link, &member, env),
            ToNode::Charge(c) => {
                crate::ledger::serve(&self.node, &self.cfg, link, &member, &role, c)
            }
            ToNode::Witness { verifier, note } => crate::witness::serve_witness(
                &self.node, &self.cfg, link, &member, &role, &verifier, &note,
            ),
            ToNode::Witnessed { node } => crate::witness::serve_witnessed(&self.node, link, &node),
            _ => bail!("unexpected control message"),
        }
    }

    /// Route a peer's MPC messages to their session, checking that the TLS
    /// identity is the party the message claims to come from.
    fn peer_messages(&self, mut link: Link, member: &str, mut bytes: Vec<u8>) -> Result<()> {
        loop {
            let m = match Message::decode(&bytes, crate::net::MAX_FRAME) {
                Ok(m) => m,
                Err(e) => {
                    // Garbage from an authenticated node: every open session
                    // it takes part in aborts now rather than at the deadline.
                    self.violation(member, "a party sent a malformed message");
                    bail!("peer message: {e}");
                }
            };
            let tx = {
                let sessions = self.sessions.lock().map_err(|_| anyhow!("lock"))?;
                let Some(s) = sessions.get(&m.session) else {
                    bail!("a message for no open session (late or replayed)");
                };
                if !s.members.iter().any(|p| p == member) {
                    // Not a party: drop it without disturbing the session.
                    bail!("a message from a node outside the session");
                }
                let claimed = s.members.get(m.sender as usize);
                if claimed.map(String::as_str) != Some(member) {
                    let _ = s.tx.send(Inbound::Violation(
                        "a peer sent a message under another party's index",
                    ));
                    bail!("sender index does not match the TLS identity");
                }
                s.tx.clone()
            };
            if tx.send(Inbound::Message(bytes)).is_err() {
                bail!("session closed");
            }
            // Peers keep the link for the session's rounds; it idles out.
            link.set_timeout(self.cfg.round_timeout() * 4)?;
            let (kind, next) = link.recv()?;
            anyhow::ensure!(kind == MPC, "control message on a peer link");
            bytes = next;
        }
    }

    /// Abort every open session in which `member` is a party.
    fn violation(&self, member: &str, why: &'static str) {
        if let Ok(sessions) = self.sessions.lock() {
            for s in sessions
                .values()
                .filter(|s| s.members.iter().any(|m| m == member))
            {
                let _ = s.tx.send(Inbound::Violation(why));
            }
        }
    }

    fn refuse(
        &self,
        link: &mut Link,
        req: &QueryRequest,
        kind: &str,
        session: &[u8; 32],
        trace: &JointTrace,
        r: Refusal,
    ) -> Result<()> {
        let seq = self
            .node
            .audit_joint(req, kind, session, trace, JointDecision::Refused(r))
            .ok();
        link.send_json(&FromNode::refused(r, seq))
    }

    fn federate(&self, mut link: Link, member: &str, env: Signed<FederateBody>) -> Result<()> {
        let session = session_id(tag::FEDERATE, &env)?;
        let b = env.body.clone();
        let req = QueryRequest::new(&b.scene, &b.member, &b.sql);
        let none = JointTrace::default();
        if member != b.member {
            return self.refuse(&mut link, &req, "federated", &session, &none, OTHER_SIGNER);
        }
        let me = match self.node.authenticate_federate(&env) {
            Ok(i) => i,
            Err(e) => {
                return self.refuse(
                    &mut link,
                    &req,
                    "federated",
                    &session,
                    &none,
                    e.as_refusal(),
                );
            }
        };
        let (partial, trace) = self.rt.block_on(self.node.joint_partial(&req, &b.nodes));
        let partial = match partial {
            Ok(p) => p,
            Err(e) => {
                return self.refuse(
                    &mut link,
                    &req,
                    "federated",
                    &session,
                    &trace,
                    e.as_refusal(),
                );
            }
        };
        let gate = self
            .space
            .scenes
            .get(&b.scene)
            .and_then(|s| s.fhe_gate.clone());
        // A node whose execution failed (`partial.withheld`) still runs
        // every round, with a partial that suppresses every joint cell.
        let outcome = self.in_session(session, &b.nodes, |rx| match &gate {
            Some(g) => self.fhe_rounds(&mut link, &b.nodes, me, session, &partial, g, rx),
            None => self.rounds(
                &mut link,
                &b.nodes,
                me,
                session,
                &partial.plan,
                &partial.input,
                rx,
            ),
        })?;
        match outcome {
            Ok(rows) => {
                let seq = self.node.audit_joint(
                    &req,
                    "federated",
                    &session,
                    &trace,
                    JointDecision::Released(&rows),
                )?;
                link.send_json(&FromNode::Released {
                    result: rows,
                    audit_seq: seq,
                })
            }
            Err(why) => self.abort(&mut link, &req, "federated", &session, &trace, why),
        }
    }

    /// Run `rounds` with the session open to peer messages; it is closed
    /// again whatever the outcome.
    fn in_session<T>(
        &self,
        session: [u8; 32],
        nodes: &[String],
        rounds: impl FnOnce(Receiver<Inbound>) -> T,
    ) -> Result<T> {
        let members: Vec<String> = nodes
            .iter()
            .map(|n| self.cfg.addr(n).map(|a| a.member.clone()))
            .collect::<Result<_>>()?;
        let (tx, rx) = channel();
        self.sessions
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .insert(session, Session { members, tx });
        let out = rounds(rx);
        self.sessions
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .remove(&session);
        Ok(out)
    }

    /// Audit an aborted round (`kind`: federated or psi) and tell the
    /// researcher; nothing is released.
    fn abort(
        &self,
        link: &mut Link,
        req: &QueryRequest,
        kind: &str,
        session: &[u8; 32],
        trace: &JointTrace,
        why: &'static str,
    ) -> Result<()> {
        tracing::warn!(target: "kexin::node", "{kind} round aborted: {why}");
        let seq = self
            .node
            .audit_joint(req, kind, session, trace, JointDecision::Aborted(why))
            .ok();
        link.send_json(&FromNode::Aborted {
            rule: why.into(),
            audit_seq: seq,
        })
    }

    /// Tell the researcher this node is ready and wait for the start
    /// signal; the other nodes may still be computing their part.
    fn await_go(&self, link: &mut Link, ready: &FromNode) -> std::result::Result<(), &'static str> {
        link.send_json(ready)
            .map_err(|_| "the researcher went away")?;
        link.set_timeout(self.compute_allowance())
            .map_err(|_| "transport")?;
        match link.recv_json::<ToNode>() {
            Ok(ToNode::Go) => Ok(()),
            Ok(ToNode::Cancel) => Err("the researcher cancelled (another node refused)"),
            _ => Err("no start signal from the researcher"),
        }
    }

    /// Ready, wait for Go, then the three rounds. Errors are the abort
    /// rule (fixed text: never data).
    #[allow(clippy::too_many_arguments)]
    fn rounds(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
        plan: &kexin_engine::federated::JointPlan,
        input: &[i128],
        rx: Receiver<Inbound>,
    ) -> std::result::Result<JointRows, &'static str> {
        let t = self.cfg.round_timeout();
        self.await_go(
            link,
            &FromNode::Ready {
                plan: plan.digest.clone(),
                len: plan.len(),
            },
        )?;
        let parties = nodes.len();
        let mut agg = Aggregation::new(session, me as u16, parties, plan.len())
            .map_err(|_| "fewer than three parties")?;
        let scalars: Vec<_> = input
            .iter()
            .map(|v| kexin_mpc::share::encode_int(*v))
            .collect::<Result<_, _>>()
            .map_err(|_| "a partial total is out of range")?;
        // One link per peer for the whole session: rounds arrive in order.
        let mut links: BTreeMap<u16, Link> = BTreeMap::new();
        for (j, n) in nodes.iter().enumerate() {
            if j == me {
                continue;
            }
            let addr = self.cfg.addr(n).map_err(|_| "a peer has no address")?;
            let key =
                node_key(&self.space, &self.cfg, n).map_err(|_| "a peer has no certified key")?;
            let l = Link::connect(&addr.address, &self.me, &key, t)
                .map_err(|_| "a peer node is unreachable")?;
            links.insert(j as u16, l);
        }
        let deadline = |t: Duration| Instant::now() + t;
        for (to, m) in agg.share(&scalars).map_err(|_| "sharing failed")? {
            send(&mut links, to, &m)?;
        }
        wait(&mut agg, &rx, 0, deadline(t))?;
        agg.sum_shares().map_err(mpc_rule)?;
        let persons_at = plan.person_positions();
        let m = agg.open(1, &persons_at).map_err(mpc_rule)?;
        broadcast(&mut links, &m)?;
        wait(&mut agg, &rx, 1, deadline(t))?;
        let persons = agg.opened(1, &persons_at).map_err(mpc_rule)?;
        let passing = plan.passing(&persons);
        let values_at = plan.value_positions(&passing);
        let m = agg.open(2, &values_at).map_err(mpc_rule)?;
        broadcast(&mut links, &m)?;
        wait(&mut agg, &rx, 2, deadline(t))?;
        let values = agg.opened(2, &values_at).map_err(mpc_rule)?;
        plan.release(&passing, &values, parties)
            .map_err(|_| "the opened totals do not form a result")
    }
}

// ---------------------------------------------------------------- Prio3

impl NodeServer {
    /// An individual's report: stored in the open batch, or refused.
    fn contribute(
        &self,
        mut link: Link,
        member: &str,
        env: Signed<ContributionBody>,
    ) -> Result<()> {
        if member != env.body.person {
            return link.send_json(&FromNode::refused(OTHER_SIGNER, None));
        }
        match self.node.accept_contribution(&env) {
            Ok(seq) => link.send_json(&FromNode::Accepted { audit_seq: seq }),
            Err(e) => link.send_json(&FromNode::refused(e.as_refusal(), None)),
        }
    }

    /// A researcher's collection: both aggregators verify the open batch's
    /// proofs together and open its sum, if the batch is large enough.
    fn collect(&self, mut link: Link, member: &str, env: Signed<CollectBody>) -> Result<()> {
        let session = session_id(tag::COLLECT, &env)?;
        let stop = |link: &mut Link, code: Code, rule: &str| -> Result<()> {
            let seq = self
                .node
                .audit_collection(&env, &session, &[], Err((code, rule)))
                .ok();
            if code == Code::FedAbort {
                link.send_json(&FromNode::Aborted {
                    rule: rule.into(),
                    audit_seq: seq,
                })
            } else {
                link.send_json(&FromNode::Refused {
                    code: code.as_str().into(),
                    rule: rule.into(),
                    audit_seq: seq,
                })
            }
        };
        if member != env.body.member {
            return stop(&mut link, OTHER_SIGNER.code, OTHER_SIGNER.rule);
        }
        let me = match self.node.authenticate_collect(&env) {
            Ok(i) => i,
            Err(e) => {
                let r = e.as_refusal();
                return stop(&mut link, r.code, r.rule);
            }
        };
        let scene = env.body.scene.clone();
        let busy = !self
            .collecting
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .insert(scene.clone());
        if busy {
            return stop(
                &mut link,
                Code::Batch,
                "another collection of this batch is running",
            );
        }
        let result = self.collect_batch(&mut link, &env, me, session, &stop);
        self.collecting
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .remove(&scene);
        result
    }

    /// [`Self::collect`] once this node holds the scene's collection slot.
    fn collect_batch(
        &self,
        link: &mut Link,
        env: &Signed<CollectBody>,
        me: usize,
        session: [u8; 32],
        stop: &dyn Fn(&mut Link, Code, &str) -> Result<()>,
    ) -> Result<()> {
        let reports = match self.node.open_batch(&env.body.scene) {
            Ok(r) => r,
            Err(e) => {
                let r = e.as_refusal();
                return stop(link, r.code, r.rule);
            }
        };
        let outcome = self.in_session(session, &env.body.nodes, |rx| {
            self.collect_rounds(link, env, me, session, reports, rx)
        })?;
        match outcome {
            Ok((result, used)) => {
                let seq = self
                    .node
                    .audit_collection(env, &session, &used, Ok(&result))?;
                link.send_json(&FromNode::Collected {
                    result,
                    audit_seq: seq,
                })
            }
            Err((code, rule)) => stop(link, code, rule),
        }
    }

    /// Ready, Go, then three rounds between the two aggregators:
    /// 0: a random verify-key contribution and the reports held;
    /// 1: verifier shares of the common reports;
    /// 2: aggregate shares (with noise shares under DP).
    fn collect_rounds(
        &self,
        link: &mut Link,
        env: &Signed<CollectBody>,
        me: usize,
        session: [u8; 32],
        reports: Vec<(String, kexin_mpc::prio3::Stored)>,
        rx: Receiver<Inbound>,
    ) -> std::result::Result<(BatchResult, Vec<String>), (Code, &'static str)> {
        use kexin_engine::contribution as kc;
        use kexin_mpc::prio3::{Batch, verify_key};
        let abort = |why: &'static str| (Code::FedAbort, why);
        let b = &env.body;
        let (_, c, _) = self.node.contribution_scene(&b.scene).map_err(|e| {
            let r = e.as_refusal();
            (r.code, r.rule)
        })?;
        let c = c.clone();
        let t = self.cfg.round_timeout();
        self.await_go(
            link,
            &FromNode::Ready {
                plan: "collect".into(),
                len: 0,
            },
        )
        .map_err(abort)?;
        let other = 1 - me;
        let mut links = self.peer_links(&b.nodes, &[other]).map_err(abort)?;
        let mut inbox =
            kexin_mpc::message::Inbox::new(session, &[other as u16], crate::net::MAX_FRAME);
        let msg = |round: u32, payload: Vec<u8>| Message {
            session,
            round,
            sender: me as u16,
            payload,
        };
        // Round 0: 32 random bytes, then the report nonces held (hex, one
        // per line).
        let mut r = [0u8; 32];
        getrandom::fill(&mut r).map_err(|_| abort("no randomness"))?;
        let mut p0 = r.to_vec();
        p0.extend_from_slice(
            reports
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join("\n")
                .as_bytes(),
        );
        send(&mut links, other as u16, &msg(0, p0)).map_err(abort)?;
        let theirs = next_payload(&rx, &mut inbox, t).map_err(abort)?;
        let (their_r, their_ids) = theirs
            .split_at_checked(32)
            .ok_or(abort("the peer sent a malformed message"))?;
        let their_r: [u8; 32] = their_r
            .try_into()
            .map_err(|_| abort("the peer sent a malformed message"))?;
        let their_ids: std::collections::HashSet<&str> = std::str::from_utf8(their_ids)
            .map_err(|_| abort("the peer sent a malformed message"))?
            .split('\n')
            .filter(|s| !s.is_empty())
            .collect();
        let key = if me == 0 {
            verify_key(&r, &their_r)
        } else {
            verify_key(&their_r, &r)
        };
        // The common reports, in the leader's order.
        let mut common: Vec<(String, kexin_mpc::prio3::Stored)> = reports
            .into_iter()
            .filter(|(id, _)| their_ids.contains(id.as_str()))
            .collect();
        if me == 1 {
            let leader: Vec<&str> = std::str::from_utf8(&theirs[32..])
                .unwrap_or_default()
                .split('\n')
                .collect();
            let order: HashMap<&str, usize> =
                leader.iter().enumerate().map(|(i, s)| (*s, i)).collect();
            common.sort_by_key(|(id, _)| order.get(id.as_str()).copied().unwrap_or(usize::MAX));
        }
        let under = (Code::Batch, "the batch is under the scene's minimum size");
        if common.len() < c.min_batch {
            return Err(under);
        }
        let ids: Vec<String> = common.iter().map(|(id, _)| id.clone()).collect();
        let vdaf = kc::vdaf(&c).map_err(|_| abort("the scene's measure"))?;
        let mut batch = Batch::new(
            vdaf,
            me,
            &kc::context(&self.space.name, &b.scene),
            key,
            common.into_iter().map(|(_, s)| s).collect(),
        )
        .map_err(|_| abort("the batch"))?;
        let shares = batch.verifier_shares().map_err(|_| abort("verification"))?;
        send(&mut links, other as u16, &msg(1, shares)).map_err(abort)?;
        let theirs = next_payload(&rx, &mut inbox, t * 2).map_err(abort)?;
        let verdict = batch
            .combine(&theirs)
            .map_err(|_| abort("the peer sent malformed verifier shares"))?;
        if verdict.accepted < c.min_batch {
            return Err(under);
        }
        let noise = kc::noise_share(&c).map_err(|_| abort("noise"))?;
        let mine = batch
            .aggregate_share(&noise)
            .map_err(|_| abort("aggregation"))?;
        send(&mut links, other as u16, &msg(2, mine.clone())).map_err(abort)?;
        let theirs = next_payload(&rx, &mut inbox, t).map_err(abort)?;
        let values = batch
            .open(&mine, &theirs)
            .map_err(|_| abort("the peer sent a malformed aggregate share"))?;
        // Every verified report closes with the batch, valid or not: a
        // rejected one is not retried in the next batch.
        let used = ids;
        let (kind, labels) = match &c.kind {
            kexin_engine::policy::ContributionKind::Sum { .. } => ("sum", vec!["sum".to_string()]),
            kexin_engine::policy::ContributionKind::Histogram { buckets } => {
                ("histogram", buckets.clone())
            }
        };
        let dp = c.epsilon;
        let mut explanation = vec![format!(
            "Prio3 ({}) over the two aggregators {} and {}: each saw one share of every report; the validity proofs were checked on shares and only the batch total was opened",
            kind, b.nodes[0], b.nodes[1]
        )];
        explanation.push(format!(
            "released because the batch holds at least {} valid reports",
            c.min_batch
        ));
        if let Some(eps) = dp {
            explanation.push(format!(
                "differential privacy: each aggregator added a share of discrete Laplace noise (ε = {eps} for the batch); report counts are withheld"
            ));
        }
        let result = BatchResult {
            scene: b.scene.clone(),
            kind: kind.into(),
            labels,
            values: values.iter().map(|v| *v as i64).collect(),
            reports: dp.is_none().then_some(verdict.accepted),
            rejected: dp.is_none().then_some(verdict.rejected),
            epsilon: dp,
            half_width_95: dp.map(|e| kc::half_width(&c, e)),
            explanation,
        };
        Ok((result, used))
    }
}

// ---------------------------------------------------------------- FHE gate

/// How long the FHE aggregator may take for `totals` joint totals on 2
/// cores: about 12 ms per 2-bit block to expand and sanitize each
/// contribution (up to 32 blocks per total and party), carry propagation,
/// and the gate (0.3 s per 32-bit compare and select). Generous: the round
/// aborts only past it.
pub(crate) fn fhe_allowance(totals: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(6) * totals as u32
}

/// What the key holder tells every node: per cell, `None` (suppressed) or
/// the joint totals.
type Opened = Vec<Option<Vec<i64>>>;

impl NodeServer {
    /// Links to the named peers for one session.
    fn peer_links(
        &self,
        nodes: &[String],
        to: &[usize],
    ) -> std::result::Result<BTreeMap<u16, Link>, &'static str> {
        let t = self.cfg.round_timeout();
        let mut links = BTreeMap::new();
        for &j in to {
            let n = &nodes[j];
            let addr = self.cfg.addr(n).map_err(|_| "a peer has no address")?;
            let key =
                node_key(&self.space, &self.cfg, n).map_err(|_| "a peer has no certified key")?;
            let l = Link::connect(&addr.address, &self.me, &key, t)
                .map_err(|_| "a peer node is unreachable")?;
            links.insert(j as u16, l);
        }
        Ok(links)
    }

    /// The FHE gate's threshold when a node took part without its data:
    /// every joint count is under it, since each node's count is under
    /// 2^32 / nodes (`Encryptor::encrypt` refuses more) and there are at
    /// least three nodes.
    const NO_CELL_PASSES: u32 = u32::MAX;

    /// The aggregator's server key: read and checked once per key holder
    /// and key (the holder's signed statement names the key in use, so
    /// rotated keys are picked up).
    fn fhe_aggregator(
        &self,
        holder: &str,
    ) -> std::result::Result<Arc<kexin_mpc::fhe::Aggregator>, &'static str> {
        let key = node_key(&self.space, &self.cfg, holder)
            .map_err(|_| "the key holder has no certified key")?;
        let st = crate::fhe::statement(&self.space, &key, holder)
            .map_err(|_| "the key holder's key statement is missing or not verified")?;
        let id = format!("{holder}/{}", st.server_key_sha256);
        let mut cache = self.fhe.lock().map_err(|_| "lock")?;
        if let Some((cached, a)) = cache.as_ref()
            && *cached == id
        {
            return Ok(Arc::clone(a));
        }
        let a = Arc::new(
            crate::fhe::aggregator(&self.space, &key, holder)
                .map_err(|_| "the key holder's server key is missing, oversized or not verified")?,
        );
        *cache = Some((id, Arc::clone(&a)));
        Ok(a)
    }

    /// The FHE-gated rounds. Every node encrypts its partial totals under
    /// the key holder's compact public key and sends them to the
    /// aggregator (round 0); the aggregator adds them and gates every cell
    /// under encryption, and sends the gated outputs to the key holder
    /// (round 1); the key holder decrypts them and sends the released
    /// cells to every other node (round 2). No node sees a suppressed
    /// cell's count.
    #[allow(clippy::too_many_arguments)]
    fn fhe_rounds(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
        partial: &kexin_engine::federated::JointPartial,
        gate: &kexin_engine::policy::FheGate,
        rx: Receiver<Inbound>,
    ) -> std::result::Result<JointRows, &'static str> {
        use kexin_mpc::fhe::Layout;
        let plan = &partial.plan;
        let t = self.cfg.round_timeout();
        let pos = |n: &str| nodes.iter().position(|x| x == n);
        let agg = pos(&gate.aggregator).ok_or("the FHE aggregator is not a party")?;
        let kh = pos(&gate.key_holder).ok_or("the FHE key holder is not a party")?;
        let (cells, stats, count_at, k, counts) = plan
            .gate_shape()
            .map_err(|_| "the plan cannot be gated under FHE")?;
        let mut layout = Layout::new(cells, stats, count_at)
            .map_err(|_| "too many cells and totals to gate under FHE")?;
        for c in counts {
            layout = layout.narrow(c).map_err(|_| "the plan's counts")?;
        }
        let holder_key = node_key(&self.space, &self.cfg, &gate.key_holder)
            .map_err(|_| "the key holder has no certified key")?;
        let enc = crate::fhe::encryptor(&self.space, &holder_key, &gate.key_holder)
            .map_err(|_| "the key holder's public key is missing or not verified")?;
        // Round 0's payload: one byte, 1 when this node takes part without
        // its data (its execution failed; it then encrypts zeros, the same
        // work), then the sealed ciphertexts. Under any 1 the aggregator
        // gates at a threshold no joint count reaches, so every cell is
        // suppressed: what the researcher sees does not say which node
        // failed, or that one did.
        let zeros = vec![0; plan.len()];
        let input = if partial.withheld {
            &zeros
        } else {
            &partial.input
        };
        let mut mine = vec![u8::from(partial.withheld)];
        mine.extend(
            enc.encrypt(&layout, input, nodes.len())
                .map_err(|_| "a partial total is out of range for the FHE gate")?,
        );
        let k = u32::try_from(k).map_err(|_| "the threshold is out of range")?;
        // The keys are checked before Ready: a node without usable keys
        // stops the query before anyone waits on it.
        let aggregator = if me == agg {
            Some(self.fhe_aggregator(&gate.key_holder)?)
        } else {
            None
        };
        let holder = if me == kh {
            Some(
                crate::fhe::key_holder(&self.space.dir, &gate.key_holder)
                    .map_err(|_| "the key holder's secret key is unavailable")?,
            )
        } else {
            None
        };
        self.await_go(
            link,
            &FromNode::Ready {
                plan: plan.digest.clone(),
                len: plan.len(),
            },
        )?;
        let msg = |round: u32, payload: Vec<u8>| Message {
            session,
            round,
            sender: me as u16,
            payload,
        };
        let others: Vec<usize> = (0..nodes.len()).filter(|j| *j != me).collect();
        let schedule: Vec<(u16, Vec<u32>)> = if me == agg {
            others
                .iter()
                .map(|&j| (j as u16, if j == kh { vec![0, 2] } else { vec![0] }))
                .collect()
        } else if me == kh {
            vec![(agg as u16, vec![1])]
        } else {
            vec![(kh as u16, vec![2])]
        };
        let mut inbox =
            kexin_mpc::message::Inbox::scheduled(session, &schedule, crate::net::MAX_FRAME);
        // The aggregator's work grows with the totals (expansion, carries,
        // the gate): the others wait that long for its result.
        let wait = t + fhe_allowance(layout.len());
        // The aggregator links to the key holder only once it has the
        // gated outputs: a link idle for longer than a round is closed.
        let mut links = if me == agg {
            BTreeMap::new()
        } else {
            self.peer_links(nodes, &[agg])?
        };
        // An empty round-1 or round-2 payload says "aborted": the others
        // stop at once instead of waiting out the aggregator's allowance.
        let result = |p: Vec<u8>| -> std::result::Result<Opened, &'static str> {
            if p.is_empty() {
                return Err("another node aborted the FHE gate");
            }
            serde_json::from_slice(&p).map_err(|_| "the key holder sent a malformed result")
        };
        let opened: Opened = if let Some(aggregator) = aggregator {
            let gated = (|| {
                let mut all = vec![mine];
                for _ in 0..others.len() {
                    all.push(next_payload(&rx, &mut inbox, t)?);
                }
                let mut withheld = false;
                let mut sealed = Vec::with_capacity(all.len());
                for mut p in all {
                    match p.first() {
                        Some(0) => {}
                        Some(1) => withheld = true,
                        _ => return Err("a node sent a malformed contribution"),
                    }
                    p.remove(0);
                    sealed.push(p);
                }
                let k = if withheld { Self::NO_CELL_PASSES } else { k };
                let totals = aggregator.sum(&layout, &sealed).map_err(mpc_rule)?;
                tracing::info!(
                    target: "kexin::node",
                    "FHE gate: {} unchecked additions, {} carry propagations, {} cells",
                    totals.stats.unchecked_adds,
                    totals.stats.propagations,
                    layout.cells
                );
                aggregator.gate(totals, k).map_err(mpc_rule)
            })();
            links = self.peer_links(nodes, &[kh])?;
            match gated {
                Ok(g) => send(&mut links, kh as u16, &msg(1, g))?,
                Err(why) => {
                    let _ = send(&mut links, kh as u16, &msg(1, vec![]));
                    return Err(why);
                }
            }
            result(next_payload(&rx, &mut inbox, wait)?)?
        } else if let Some(holder) = holder {
            send(&mut links, agg as u16, &msg(0, mine))?;
            let gated = next_payload(&rx, &mut inbox, wait)?;
            let opened = if gated.is_empty() {
                Err("another node aborted the FHE gate")
            } else {
                holder.open(&layout, &gated).map_err(mpc_rule)
            };
            // Fresh links: the ones of round 0 idled while h1 computed.
            links = self.peer_links(nodes, &others)?;
            let opened: Opened = match opened {
                Ok(cells) => cells
                    .into_iter()
                    .map(|c| c.map(|v| v.into_iter().map(|x| x as i64).collect()))
                    .collect(),
                Err(why) => {
                    for &j in &others {
                        let _ = send(&mut links, j as u16, &msg(2, vec![]));
                    }
                    return Err(why);
                }
            };
            let bytes = serde_json::to_vec(&opened).map_err(|_| "encoding")?;
            for &j in &others {
                send(&mut links, j as u16, &msg(2, bytes.clone()))?;
            }
            opened
        } else {
            send(&mut links, agg as u16, &msg(0, mine))?;
            result(next_payload(&rx, &mut inbox, wait)?)?
        };
        if opened.len() != cells || opened.iter().flatten().any(|v| v.len() != stats) {
            return Err("the key holder sent a result of the wrong shape");
        }
        let passing: Vec<usize> = (0..cells).filter(|c| opened[*c].is_some()).collect();
        let values: Vec<i128> = opened
            .iter()
            .flatten()
            .flatten()
            .map(|v| i128::from(*v))
            .collect();
        let mut rows = plan
            .release(&passing, &values, nodes.len())
            .map_err(|_| "the opened totals do not form a result")?;
        if let Some(first) = rows.explanation.first_mut() {
            *first = format!(
                "joint result of {} nodes under an FHE gate: each node encrypted its partial totals under {}'s TFHE public key; {} added them and applied the person threshold under encryption; {} decrypted only the gated totals (suppressed cells decrypt to zero)",
                nodes.len(),
                gate.key_holder,
                gate.aggregator,
                gate.key_holder
            );
        }
        Ok(rows)
    }
}

impl NodeServer {
    fn psi(&self, mut link: Link, member: &str, env: Signed<PsiBody>) -> Result<()> {
        let session = session_id(tag::PSI, &env)?;
        let b = env.body.clone();
        let dataset = self
            .space
            .scenes
            .get(&b.scene)
            .and_then(|s| s.datasets.first().cloned())
            .unwrap_or_default();
        let req = QueryRequest::new(
            &b.scene,
            &b.member,
            &format!("SELECT COUNT(*) FROM {dataset}"),
        );
        let mut trace = JointTrace::default();
        if member != b.member {
            return self.refuse(&mut link, &req, "psi", &session, &trace, OTHER_SIGNER);
        }
        let me = match self.node.authenticate_psi(&env) {
            Ok(i) => i,
            Err(e) => return self.refuse(&mut link, &req, "psi", &session, &trace, e.as_refusal()),
        };
        let column = b.column.clone();
        let sum = match (b.mode.as_str(), &column) {
            ("cardinality", None) => false,
            ("sum", Some(_)) => true,
            _ => {
                let r = Refusal::new(
                    Code::Federation,
                    "--mode sum takes --column; --mode cardinality takes none",
                );
                return self.refuse(&mut link, &req, "psi", &session, &trace, r);
            }
        };
        let (items, t) = self
            .rt
            .block_on(self.node.psi_items(&req, column.as_deref()));
        trace = t;
        let items = match items {
            Ok(i) => i,
            Err(e) => return self.refuse(&mut link, &req, "psi", &session, &trace, e.as_refusal()),
        };
        let outcome = self.in_session(session, &b.nodes, |rx| {
            if sum {
                self.psi_sum_rounds(&mut link, &b, me, session, &items, rx)
            } else {
                self.psi_rounds(&mut link, &b.nodes, me, session, &items.keys, rx)
                    .map(|n| {
                        if me == 0 {
                            PsiDone::Count(n)
                        } else {
                            PsiDone::Nothing
                        }
                    })
            }
        })?;
        let done = match outcome {
            Ok(d) => d,
            Err(why) => return self.abort(&mut link, &req, "psi", &session, &trace, why),
        };
        let result = match done {
            PsiDone::Nothing => {
                let rows = JointRows {
                    columns: vec![],
                    rows: vec![],
                    accuracy: vec![],
                    suppressed_groups: 0,
                    explanation: vec!["supplied the blinded set; the first node releases".into()],
                };
                let seq = self.node.audit_joint(
                    &req,
                    "psi",
                    &session,
                    &trace,
                    JointDecision::Released(&rows),
                )?;
                return link.send_json(&FromNode::Done { audit_seq: seq });
            }
            PsiDone::Count(size) => {
                let (value, interval, epsilon) = match self
                    .rt
                    .block_on(self.node.psi_release(&req, size, &mut trace))
                {
                    Ok(v) => v,
                    Err(e) => {
                        return self.refuse(
                            &mut link,
                            &req,
                            "psi",
                            &session,
                            &trace,
                            e.as_refusal(),
                        );
                    }
                };
                PsiResult {
                    mode: "cardinality".into(),
                    column: None,
                    value,
                    interval,
                    epsilon,
                    explanation: vec![
                        format!(
                            "ECDH-PSI over ristretto255 between {} and {}: neither node saw the other's list, only blinded, shuffled points",
                            b.nodes[0], b.nodes[1]
                        ),
                        format!(
                            "the cardinality has discrete Laplace noise (sensitivity 1, ε = {epsilon} charged by {} to the requester's budget at every node of the space); the interval holds the exact overlap with 95% probability",
                            b.nodes[0]
                        ),
                    ],
                }
            }
            PsiDone::Sum(noisy) => {
                let epsilon = match self.rt.block_on(self.node.psi_charge(&req, &mut trace)) {
                    Ok(e) => e,
                    Err(e) => {
                        return self.refuse(
                            &mut link,
                            &req,
                            "psi",
                            &session,
                            &trace,
                            e.as_refusal(),
                        );
                    }
                };
                let q = items.quantum;
                let h =
                    kexin_engine::dp::laplace_half_width(items.bound as f64 / epsilon, 0.05) * q;
                // Printed on the grid's decimals.
                let p = 10f64.powi((-q.log10()).ceil().max(0.0) as i32);
                let tidy = |x: f64| (x * p).round() / p;
                let value = tidy(noisy as f64 * q);
                PsiResult {
                    mode: "sum".into(),
                    column: column.clone(),
                    value,
                    interval: [tidy(value - h), tidy(value + h)],
                    epsilon,
                    explanation: vec![
                        format!(
                            "sum of {} over the persons {} and {} share: {} encrypted each person's value (exponential ElGamal), {} added the matching ciphertexts and the noise without seeing a value or which persons matched",
                            column.as_deref().unwrap_or(""),
                            b.nodes[0],
                            b.nodes[1],
                            b.nodes[1],
                            b.nodes[0]
                        ),
                        format!(
                            "per person at most rows_per_person values, each clamped to the column's bounds; discrete Laplace noise with that sensitivity (ε = {epsilon} charged by {} to the requester's budget at every node of the space); the interval holds the exact sum with 95% probability",
                            b.nodes[1]
                        ),
                    ],
                }
            }
        };
        let rows = JointRows {
            columns: vec![result.mode.clone()],
            rows: vec![vec![kexin_engine::gate::Cell::Float(result.value)]],
            accuracy: vec![],
            suppressed_groups: 0,
            explanation: result.explanation.clone(),
        };
        let seq = self.node.audit_joint(
            &req,
            "psi",
            &session,
            &trace,
            JointDecision::Released(&rows),
        )?;
        link.send_json(&FromNode::PsiResult {
            result,
            audit_seq: seq,
        })
    }

    /// `--mode sum`: round 0, the first node sends its blinded set and the
    /// second sends its public key and (blinded point, Enc(value)) pairs,
    /// shuffled together; round 1, the second returns the first's set
    /// reblinded and the first returns the encrypted sum of the matching
    /// values plus its noise. The first learns the overlap size; the second
    /// decrypts only the noisy sum.
    fn psi_sum_rounds(
        &self,
        link: &mut Link,
        b: &PsiBody,
        me: usize,
        session: [u8; 32],
        items: &kexin_engine::federated::PsiSet,
        rx: Receiver<Inbound>,
    ) -> std::result::Result<PsiDone, &'static str> {
        use kexin_mpc::elgamal::{Ciphertext, KeyPair, PublicKey};
        use kexin_mpc::psi::{Party, decode};
        let t = self.cfg.round_timeout();
        let (mut peer, mut inbox) = self.psi_start(link, &b.nodes, me, session)?;
        let party = Party::new(session).map_err(mpc_rule)?;
        let msg = |round: u32, payload: Vec<u8>| Message {
            session,
            round,
            sender: me as u16,
            payload,
        };
        let next = |inbox: &mut kexin_mpc::message::Inbox| next_payload(&rx, inbox, t);
        if me == 0 {
            let mine = party.blind(&items.keys).map_err(mpc_rule)?;
            peer.send(MPC, &msg(0, mine.concat()).encode())
                .map_err(|_| "the peer node went away")?;
            let theirs = next(&mut inbox)?;
            if theirs.len() < 32 || !(theirs.len() - 32).is_multiple_of(96) {
                return Err("a party sent a malformed message");
            }
            let pk = PublicKey::from_point(
                decode(theirs[..32].try_into().unwrap_or(&[0; 32])).map_err(mpc_rule)?,
            );
            let pairs: Vec<&[u8]> = theirs[32..].chunks_exact(96).collect();
            let blinded: Vec<[u8; 32]> = pairs
                .iter()
                .map(|c| c[..32].try_into().unwrap_or([0; 32]))
                .collect();
            let doubled = party.reblind_in_order(&blinded).map_err(mpc_rule)?;
            let mine_double = points(&next(&mut inbox)?)?;
            if mine_double.len() != mine.len() {
                return Err("a party sent a share vector of the wrong length");
            }
            let set: std::collections::HashSet<&[u8; 32]> = mine_double.iter().collect();
            let mut total = Ciphertext::zero();
            let mut matched = 0usize;
            for (d, c) in doubled.iter().zip(&pairs) {
                if set.contains(d) {
                    total = total.add(&Ciphertext::from_bytes(&c[32..]).map_err(mpc_rule)?);
                    matched += 1;
                }
            }
            let column = b.column.as_deref().unwrap_or_default();
            let (_, bound) = self
                .node
                .psi_payload(&b.scene, column)
                .map_err(|_| "the PSI column has no bounds")?;
            let eps = self
                .node
                .psi_epsilon(&b.scene)
                .map_err(|_| "the scene has no privacy budget")?;
            let z = kexin_engine::federated::psi_noise(bound, eps).map_err(|_| "noise")?;
            // The noise's encryption also rerandomizes the sum.
            let noisy = total.add(&pk.encrypt(z).map_err(mpc_rule)?);
            peer.send(MPC, &msg(1, noisy.to_bytes().to_vec()).encode())
                .map_err(|_| "the peer node went away")?;
            Ok(PsiDone::Count(matched))
        } else {
            let keys = KeyPair::generate().map_err(mpc_rule)?;
            let mine = party.blind_in_order(&items.keys).map_err(mpc_rule)?;
            let mut pairs: Vec<[u8; 96]> = mine
                .iter()
                .zip(&items.values)
                .map(|(p, v)| {
                    let c = keys.public.encrypt(*v)?;
                    let mut out = [0u8; 96];
                    out[..32].copy_from_slice(p);
                    out[32..].copy_from_slice(&c.to_bytes());
                    Ok(out)
                })
                .collect::<kexin_mpc::Result<_>>()
                .map_err(mpc_rule)?;
            kexin_mpc::psi::shuffle(&mut pairs).map_err(mpc_rule)?;
            let mut payload = keys.public.to_bytes().to_vec();
            payload.extend(pairs.concat());
            peer.send(MPC, &msg(0, payload).encode())
                .map_err(|_| "the peer node went away")?;
            let theirs = points(&next(&mut inbox)?)?;
            let reblinded = party.reblind(&theirs).map_err(mpc_rule)?;
            peer.send(MPC, &msg(1, reblinded.concat()).encode())
                .map_err(|_| "the peer node went away")?;
            let sum = Ciphertext::from_bytes(&next(&mut inbox)?).map_err(mpc_rule)?;
            let eps = self
                .node
                .psi_epsilon(&b.scene)
                .map_err(|_| "the scene has no privacy budget")?;
            let margin = (50.0 * items.bound as f64 / eps).ceil() as u64;
            let range = (items.keys.len() as u64)
                .saturating_mul(items.bound as u64)
                .saturating_add(margin);
            let s = keys
                .decrypt(&sum, range)
                .map_err(|_| "the encrypted sum does not decrypt to a value in range")?;
            Ok(PsiDone::Sum(s))
        }
    }

    /// Ready, wait for Go, connect to the other node.
    fn psi_start(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
    ) -> std::result::Result<(Link, kexin_mpc::message::Inbox), &'static str> {
        let t = self.cfg.round_timeout();
        self.await_go(
            link,
            &FromNode::Ready {
                plan: "psi".into(),
                len: 0,
            },
        )?;
        let other = 1 - me;
        let addr = self
            .cfg
            .addr(&nodes[other])
            .map_err(|_| "the peer has no address")?;
        let key = node_key(&self.space, &self.cfg, &nodes[other])
            .map_err(|_| "the peer has no certified key")?;
        let peer = Link::connect(&addr.address, &self.me, &key, t)
            .map_err(|_| "the peer node is unreachable")?;
        let inbox = kexin_mpc::message::Inbox::new(session, &[other as u16], crate::net::MAX_FRAME);
        Ok((peer, inbox))
    }

    /// Ready, Go, then: round 0 each sends its blinded set; round 1 each
    /// returns the other's set raised to its own scalar. Both learn the
    /// overlap size, nothing else.
    fn psi_rounds(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
        items: &[Vec<u8>],
        rx: Receiver<Inbound>,
    ) -> std::result::Result<usize, &'static str> {
        use kexin_mpc::message::Inbox;
        use kexin_mpc::psi::{Party, intersection_size};
        let t = self.cfg.round_timeout();
        let (mut peer, mut inbox) = self.psi_start(link, nodes, me, session)?;
        let party = Party::new(session).map_err(mpc_rule)?;
        let mine = party.blind(items).map_err(mpc_rule)?;
        let msg = |round: u32, pts: &[[u8; 32]]| Message {
            session,
            round,
            sender: me as u16,
            payload: pts.iter().flatten().copied().collect(),
        };
        peer.send(MPC, &msg(0, &mine).encode())
            .map_err(|_| "the peer node went away")?;
        let next = |inbox: &mut Inbox| points(&next_payload(&rx, inbox, t)?);
        let theirs = next(&mut inbox)?;
        let reblinded = party.reblind(&theirs).map_err(mpc_rule)?;
        peer.send(MPC, &msg(1, &reblinded).encode())
            .map_err(|_| "the peer node went away")?;
        let mine_double = next(&mut inbox)?;
        if mine_double.len() != mine.len() {
            return Err("a party sent a share vector of the wrong length");
        }
        Ok(intersection_size(&mine_double, &reblinded))
    }
}

/// The next message of a two-party exchange (checked by `inbox`), or why
/// the round aborts.
fn next_payload(
    rx: &Receiver<Inbound>,
    inbox: &mut kexin_mpc::message::Inbox,
    t: Duration,
) -> std::result::Result<Vec<u8>, &'static str> {
    match rx.recv_timeout(t) {
        Ok(Inbound::Message(bytes)) => Ok(inbox.accept(&bytes).map_err(mpc_rule)?.payload),
        Ok(Inbound::Violation(why)) => Err(why),
        Err(_) => Err("a party timed out or disconnected"),
    }
}

/// A payload of 32-byte points.
fn points(p: &[u8]) -> std::result::Result<Vec<[u8; 32]>, &'static str> {
    if !p.len().is_multiple_of(32) {
        return Err("a party sent a malformed message");
    }
    Ok(p.chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            b
        })
        .collect())
}

fn mpc_rule(e: kexin_mpc::Error) -> &'static str {
    use kexin_mpc::Error as E;
    match e {
        E::InvalidScalar => "a party sent an invalid share encoding",
        E::InvalidPoint => "a party sent an invalid group element",
        E::LengthMismatch => "a party sent a share vector of the wrong length",
        E::OutOfRange => "the opened total is out of range (a corrupted share)",
        E::Malformed(_) => "a party sent a malformed message",
        E::Unexpected(_) => "a party sent a replayed, reordered or foreign message",
        E::Timeout => "a party timed out or disconnected",
        E::Fhe(_) => {
            "an FHE object was refused (size limit, conformance, or outputs that were not gated)"
        }
        _ => "the protocol failed",
    }
}

fn send(
    links: &mut BTreeMap<u16, Link>,
    to: u16,
    m: &Message,
) -> std::result::Result<(), &'static str> {
    links
        .get_mut(&to)
        .ok_or("no link to a peer")?
        .send(MPC, &m.encode())
        .map_err(|_| "a peer node went away")
}

fn broadcast(
    links: &mut BTreeMap<u16, Link>,
    m: &Message,
) -> std::result::Result<(), &'static str> {
    let bytes = m.encode();
    for l in links.values_mut() {
        l.send(MPC, &bytes).map_err(|_| "a peer node went away")?;
    }
    Ok(())
}

/// Take messages until every peer's `round` has arrived, or abort.
fn wait(
    agg: &mut Aggregation,
    rx: &Receiver<Inbound>,
    round: u32,
    until: Instant,
) -> std::result::Result<(), &'static str> {
    while !agg.complete(round) {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Inbound::Message(bytes)) => agg.receive(&bytes).map_err(mpc_rule)?,
            Ok(Inbound::Violation(why)) => return Err(why),
            Err(_) => return Err("a party timed out or disconnected"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- researcher

/// How one node ended a federated query, as the researcher saw it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// The researcher's result of `kexin federate`.
#[derive(Debug, Clone, Serialize)]
pub struct FederatedOutcome {
    /// `released`, `refused` or `aborted`.
    pub status: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<kexin_engine::gate::Cell>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accuracy: Vec<Vec<Option<kexin_engine::dp::Accuracy>>>,
    pub suppressed_groups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub explanation: Vec<String>,
    /// The session digest every node's audit entry carries.
    pub session: String,
    pub nodes: Vec<NodeReport>,
}

impl FederatedOutcome {
    pub fn exit_status(&self) -> i32 {
        match self.status.as_str() {
            "released" => 0,
            "aborted" => Code::FedAbort.exit_status(),
            _ => 3,
        }
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
        status: "aborted".into(),
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
    // An FHE-gated scene's rounds take seconds per total (see fhe_allowance).
    let go_wait = space
        .scenes
        .get(scene)
        .filter(|s| s.fhe_gate.is_some())
        .map(|_| cfg.round_timeout() * 4 + fhe_allowance(kexin_mpc::fhe::limit::MAX_VALUES));
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
        out.status = "released".into();
        out.columns = r.columns;
        out.rows = r.rows;
        out.accuracy = r.accuracy;
        out.suppressed_groups = r.suppressed_groups;
        out.explanation = r.explanation;
    } else {
        out.code = Some(Code::FedAbort.as_str().into());
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
            decision: "unreachable".into(),
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
        status: String,
        code: String,
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
    let mut refused: Option<(String, String)> = None;
    for (i, r) in ready.iter().enumerate() {
        let rep = &mut reports[i];
        match r {
            Ok(FromNode::Ready { plan, len }) => {
                rep.decision = "ready".into();
                plans.push((plan.clone(), *len));
            }
            Ok(FromNode::Refused {
                code,
                rule,
                audit_seq,
            }) => {
                rep.decision = "refused".into();
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
                refused.get_or_insert((code.clone(), rule.clone()));
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
            status: "refused".into(),
            code,
            rule,
        },
        None => Answer::Stopped {
            status: "aborted".into(),
            code: Code::FedAbort.as_str().into(),
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
                rep.decision = "released".into();
                rep.audit_seq = Some(*audit_seq);
            }
            Ok(FromNode::Refused {
                rule, audit_seq, ..
            }) => {
                rep.decision = "refused".into();
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
            }
            Ok(FromNode::Aborted { rule, audit_seq }) => {
                rep.decision = "aborted".into();
                rep.audit_seq = *audit_seq;
                rep.rule = Some(rule.clone());
            }
            Ok(_) => {}
            Err(_) => {
                if rep.decision == "ready" {
                    rep.decision = "no answer".into();
                }
            }
        }
    }
}

/// The researcher's result of `kexin psi`.
#[derive(Debug, Clone, Serialize)]
pub struct PsiOutcome {
    pub status: String,
    /// The noisy overlap size (released by the first node).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub result: Option<PsiResult>,
    /// `--mode sum`: the noisy sum over the overlap (released by the second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<PsiResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
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
    mode: &str,
    column: Option<&str>,
) -> Result<PsiOutcome> {
    anyhow::ensure!(nodes.len() == 2, "--nodes names exactly two nodes for PSI");
    let cfg = FedConfig::load(&space.dir)?;
    let body = PsiBody {
        space: space.name.clone(),
        scene: scene.into(),
        member: member.into(),
        nodes: nodes.to_vec(),
        mode: mode.into(),
        column: column.map(str::to_string),
        nonce: kexin_engine::identity::nonce()?,
        time: kexin_engine::store::now_utc().1,
    };
    let env = Signed::sign(tag::PSI, body, key)?;
    let mut out = PsiOutcome {
        status: "aborted".into(),
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
        "sum" => count.is_some() && second.is_some(),
        _ => count.is_some() && second_done,
    };
    if complete {
        out.status = "released".into();
        out.result = count;
        out.sum = second;
    } else {
        out.code = Some(Code::FedAbort.as_str().into());
        out.rule = Some(abort_rule(&out.nodes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_limits_handshakes_per_source_and_frees_places() {
        let a = Arc::new(Admission::default());
        let flood = std::net::IpAddr::from([127, 0, 0, 9]);
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut held: Vec<Ticket> = (0..MAX_HANDSHAKES_PER_SOURCE)
            .filter_map(|_| Admission::enter(&a, flood))
            .collect();
        assert_eq!(held.len(), MAX_HANDSHAKES_PER_SOURCE);
        // The flooding source is refused; another source is not.
        assert!(Admission::enter(&a, flood).is_none());
        let mut p = Admission::enter(&a, peer).expect("another source gets in");
        // A finished handshake frees its source's place, not its slot.
        held[0].handshake_over();
        assert!(Admission::enter(&a, flood).is_some_and(|t| {
            drop(t);
            true
        }));
        p.handshake_over();
        drop(held);
        drop(p);
        let s = a.state.lock().expect("lock");
        assert_eq!(s.0, 0, "every slot is given back");
        assert!(s.1.is_empty());
    }

    #[test]
    fn admission_limits_authenticated_connections_per_member() {
        let a = Arc::new(Admission::default());
        // A researcher behind many addresses: its places are per member.
        let mut held = Vec::new();
        for i in 0..MAX_PER_MEMBER {
            let mut t =
                Admission::enter(&a, std::net::IpAddr::from([10, 0, 0, i as u8])).expect("a slot");
            t.handshake_over();
            assert!(t.authenticated("alice", "researcher"));
            held.push(t);
        }
        let mut more = Admission::enter(&a, std::net::IpAddr::from([10, 0, 1, 1])).expect("slot");
        more.handshake_over();
        assert!(
            !more.authenticated("alice", "researcher"),
            "alice holds all hers"
        );
        assert!(more.authenticated("bob", "researcher"), "bob still gets in");
        drop(more);
        // A peer node has more places (one link per session and peer).
        let mut links = Vec::new();
        for _ in 0..MAX_PER_MEMBER + 1 {
            let mut t = Admission::enter(&a, std::net::IpAddr::from([10, 0, 2, 1])).expect("slot");
            t.handshake_over();
            assert!(t.authenticated("node-h2", "node"));
            links.push(t);
        }
        // Closing a connection gives its member's place back.
        held.pop();
        let mut again = Admission::enter(&a, std::net::IpAddr::from([10, 0, 1, 2])).expect("slot");
        again.handshake_over();
        assert!(again.authenticated("alice", "researcher"));
        drop(again);
        drop(held);
        drop(links);
        assert!(a.members.lock().expect("lock").is_empty());
        assert_eq!(a.state.lock().expect("lock").0, 0);
    }
}
