//! The node server: accept, admission, TLS, routing of control requests
//! to their service and of peer messages to their session, and the pump
//! that carries a protocol role's messages over the links with the round
//! timeouts. What each request does is in `services.rs`; the protocols'
//! rounds are the engine's ([`kexin_engine::federated::rounds`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use kexin_engine::federated::rounds::{Abort, Outbound, Role, TIMED_OUT, Then};
use kexin_engine::node::Node;
use kexin_engine::policy::Space;
use kexin_mpc::message::Message;

use super::admission::{
    Admission, DRAIN_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES_PER_SOURCE,
    MAX_PER_MEMBER, MAX_PER_NODE_MEMBER, MAX_QUERIES, MAX_QUERIES_PER_MEMBER, Pace, Ticket,
};
use super::config::{FedConfig, node_key, pins};
use super::wire::{FromNode, ToNode};
use crate::net::{Link, LivePins, MPC};

/// How often a node server shows a grown log's checkpoint to its peers.
const WITNESS_INTERVAL: Duration = Duration::from_secs(5);

/// A running node: its engine, identity, peers and open sessions.
#[derive(Debug)]
pub struct NodeServer {
    pub(super) node: Node,
    pub(super) space: Arc<Space>,
    pub(super) cfg: FedConfig,
    pub(super) me: SigningKey,
    pins: Arc<LivePins>,
    pub(super) rt: tokio::runtime::Runtime,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Contribution scenes being collected here: one collection of a batch
    /// at a time, so a batch is never released twice.
    pub(super) collecting: Mutex<std::collections::HashSet<String>>,
    /// The FHE aggregator's server key (by key holder and key digest).
    pub(super) fhe: Mutex<Option<(String, Arc<kexin_mpc::fhe::Aggregator>)>>,
    /// Slots for queries running at once ([`MAX_QUERIES`]).
    queries: tokio::sync::Semaphore,
    /// Each member's share of them ([`MAX_QUERIES_PER_MEMBER`]).
    member_queries: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Each member's pace of queries (`limits.queries_per_minute`).
    pace: Pace,
    /// Set once the node is to stop taking connections.
    stopping: std::sync::atomic::AtomicBool,
    /// The HTTP API's certificate (PEM), once the API serves.
    pub(super) api_cert: std::sync::OnceLock<String>,
    /// The console certificate key's SHA-256 (base64), once it serves.
    pub(super) console_spki: std::sync::OnceLock<String>,
    /// The node key's signature over it ([`super::console::binding_message`]).
    pub(super) console_binding: std::sync::OnceLock<String>,
}

#[derive(Debug)]
struct Session {
    /// The member identity of each party, by party index.
    members: Vec<String>,
    tx: Sender<Inbound>,
}

#[derive(Debug)]
pub(super) enum Inbound {
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
        let pins = {
            let space = Arc::clone(&space);
            Arc::new(LivePins::reloading(pins(&space)?, move || pins(&space)))
        };
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
        let pace = Pace::new(space.limits.queries_per_minute);
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
            queries: tokio::sync::Semaphore::new(MAX_QUERIES),
            member_queries: Default::default(),
            pace,
            stopping: Default::default(),
            api_cert: Default::default(),
            console_spki: Default::default(),
            console_binding: Default::default(),
        })
    }

    /// How long a node that is ready waits for the start signal: the other
    /// nodes may still be running their part (up to the query deadline).
    pub(super) fn compute_allowance(&self) -> Duration {
        Duration::from_secs(self.space.limits.timeout_seconds) + self.cfg.round_timeout()
    }

    /// Whether the node has been told to stop.
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait for one of `member`'s [`MAX_QUERIES_PER_MEMBER`] places, then
    /// for the member's turn at its pace ([`Pace`]), then for one of the
    /// node's [`MAX_QUERIES`] query slots; the place and the slot are freed
    /// when the returned permits drop.
    pub(super) fn query_slot(
        &self,
        member: &str,
    ) -> Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::SemaphorePermit<'_>,
    )> {
        let mine =
            {
                let mut all = self.member_queries.lock().ok()?;
                Arc::clone(all.entry(member.to_string()).or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES_PER_MEMBER))
                }))
            };
        let place = self.rt.block_on(mine.acquire_owned()).ok()?;
        let wait = self.pace.reserve(member, std::time::Instant::now());
        if !wait.is_zero() {
            tracing::debug!(target: "kexin::node", "a member's query waits for its pace");
            std::thread::sleep(wait);
        }
        let slot = self.rt.block_on(self.queries.acquire()).ok()?;
        Some((place, slot))
    }

    /// Serve on `listener` (one thread per connection) until the node is
    /// stopped ([`NodeServer::stop_on_signals`]). `ready` is called once
    /// the node takes requests. Once stopped, the node takes no new
    /// connection, lets the ones it took finish (at most
    /// [`DRAIN_TIMEOUT`]) and returns: every answer it sent was committed
    /// before it was sent, so nothing acknowledged is lost.
    pub fn serve(self: Arc<Self>, listener: TcpListener, ready: impl FnOnce()) -> Result<()> {
        let tls = crate::net::server_config(&self.me, Arc::clone(&self.pins))?;
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
        ready();
        for tcp in listener.incoming() {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
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
        drop(listener);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while admission.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stop serving on SIGTERM or SIGINT (the process's handlers replace
    /// the default ones): mark the node stopping and wake the accept loop
    /// on `addr` with a connection of its own.
    pub fn stop_on_signals(self: &Arc<Self>, addr: std::net::SocketAddr) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = self.rt.enter();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = Arc::clone(self);
        self.rt.spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            this.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let wake = if addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        });
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
            anyhow::ensure!(
                role == kexin_engine::identity::Role::Node.as_str(),
                "MPC messages come from nodes only"
            );
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
            ToNode::Go | ToNode::Cancel => bail!("unexpected control message"),
            other => self.direct(link, &member, &role, other),
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

    /// Run `rounds` with the session open to peer messages; it is closed
    /// again whatever the outcome.
    pub(super) fn in_session<T>(
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

    /// Tell the researcher this node is ready and wait for the start
    /// signal; the other nodes may still be computing their part.
    pub(super) fn await_go(&self, link: &mut Link, ready: &FromNode) -> Result<(), Abort> {
        link.send_json(ready)
            .map_err(|_| Abort::fed("the researcher went away"))?;
        link.set_timeout(self.compute_allowance())
            .map_err(|_| Abort::fed("transport"))?;
        match link.recv_json::<ToNode>() {
            Ok(ToNode::Go) => Ok(()),
            Ok(ToNode::Cancel) => Err(Abort::fed(
                "the researcher cancelled (another node refused)",
            )),
            _ => Err(Abort::fed("no start signal from the researcher")),
        }
    }

    /// Carry `role`'s messages until it is done or aborts. A peer is linked
    /// at the first message for it, and linked afresh when its link idled
    /// past two round timeouts (the peer closes idle links after four). A
    /// role that waits gets its next message within its patience, counted
    /// from what it last sent; else it aborts as timed out, and a peer that
    /// broke the transport rules aborts it at once.
    pub(super) fn pump<R: Role + ?Sized>(
        &self,
        role: &mut R,
        nodes: &[String],
        rx: &Receiver<Inbound>,
    ) -> Result<R::Output, Abort> {
        let t = self.cfg.round_timeout();
        let mut links = PeerLinks {
            server: self,
            nodes,
            open: BTreeMap::new(),
        };
        let mut step = role.start();
        let mut deadline = Instant::now();
        let mut first = true;
        loop {
            let sent = !step.send.is_empty();
            let aborting = matches!(step.then, Then::Abort(_));
            for o in step.send {
                match links.send(&o) {
                    Ok(()) => {}
                    // An aborting role's last messages are best effort.
                    Err(_) if aborting => {}
                    Err(why) => return Err(Abort::fed(why)),
                }
            }
            let patience = match step.then {
                Then::Done(out) => return Ok(out),
                Then::Abort(a) => return Err(a),
                Then::Await(p) => p,
            };
            if sent || first {
                deadline = Instant::now() + patience.wait(t);
                first = false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            step = match rx.recv_timeout(left) {
                Ok(Inbound::Message(bytes)) => role.step(&bytes),
                Ok(Inbound::Violation(why)) => return Err(Abort::fed(why)),
                Err(_) => return Err(TIMED_OUT),
            };
        }
    }
}

/// The links of one session's pump, by party index.
struct PeerLinks<'a> {
    server: &'a NodeServer,
    nodes: &'a [String],
    open: BTreeMap<u16, (Link, Instant)>,
}

impl PeerLinks<'_> {
    fn send(&mut self, o: &Outbound) -> std::result::Result<(), &'static str> {
        let t = self.server.cfg.round_timeout();
        let stale = self
            .open
            .get(&o.to)
            .is_none_or(|(_, used)| used.elapsed() > t * 2);
        if stale {
            let link = self.server.connect(self.nodes, o.to as usize)?;
            self.open.insert(o.to, (link, Instant::now()));
        }
        let (link, used) = self.open.get_mut(&o.to).ok_or("no link to a peer")?;
        *used = Instant::now();
        link.send(MPC, &o.message.encode())
            .map_err(|_| "a peer node went away")
    }
}

impl NodeServer {
    /// A link to party `j` of `nodes`.
    pub(super) fn connect(
        &self,
        nodes: &[String],
        j: usize,
    ) -> std::result::Result<Link, &'static str> {
        let n = nodes.get(j).ok_or("no link to a peer")?;
        let addr = self.cfg.addr(n).map_err(|_| "a peer has no address")?;
        let key = node_key(&self.space, &self.cfg, n).map_err(|_| "a peer has no certified key")?;
        Link::connect(&addr.address, &self.me, &key, self.cfg.round_timeout())
            .map_err(|_| "a peer node is unreachable")
    }
}
