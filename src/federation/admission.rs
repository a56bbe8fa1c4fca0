//! Which connections a node takes, before and after the TLS handshake: a
//! flood from one address or one member cannot take the slots its peers
//! need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections a node serves at once (each holds a thread).
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Connections from one source address that may be in the TLS handshake
/// at once: idle or slow unauthenticated connections from one place cannot
/// take the node's connection slots from its peers.
pub(crate) const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// How long a TLS handshake (with the pinned member key) may take in all.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Authenticated connections one member other than a node may hold at
/// once: a researcher or an individual cannot take the node's connection
/// slots from the others, whatever address they come from.
pub(crate) const MAX_PER_MEMBER: usize = 8;
/// The same for a peer node, which holds one link per open session and
/// peer, and its witness and ledger calls.
pub(crate) const MAX_PER_NODE_MEMBER: usize = 96;

/// Queries a node runs at once; more wait for a slot. With the per-query
/// memory pool (`[limits] memory_mb`), this bounds what queries hold.
pub(crate) const MAX_QUERIES: usize = 32;
/// Of those, the queries one member may run at once, whichever port they
/// came through (peer link, HTTP API, Flight SQL); more wait their turn.
/// One researcher's burst holds at most a quarter of the slots.
pub(crate) const MAX_QUERIES_PER_MEMBER: usize = 8;
/// Each member's pace of queries: a token bucket per member that fills at
/// `limits.queries_per_minute` and holds a quarter minute's worth. A query
/// takes a token when it asks; when there is none it reserves the next one
/// and waits until then, so one member's flood slows that member only and
/// the others keep their share of the node's query slots. Reservations are
/// made inside the member's [`MAX_QUERIES_PER_MEMBER`] places, so a member
/// has at most that many waiting.
#[derive(Debug)]
pub(crate) struct Pace {
    /// Tokens per second (0: no pace).
    rate: f64,
    /// The most tokens a bucket holds.
    burst: f64,
    /// (tokens, when they were counted) per member; tokens go below zero
    /// when reserved ahead.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Pace {
    pub(crate) fn new(per_minute: u32) -> Pace {
        Pace {
            rate: f64::from(per_minute) / 60.0,
            burst: (f64::from(per_minute) / 4.0).max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Take one of `member`'s tokens at `now`; how long the query must wait
    /// before it starts (zero when a token was there).
    pub(crate) fn reserve(&self, member: &str, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let Ok(mut all) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        let (tokens, at) = all.entry(member.to_string()).or_insert((self.burst, now));
        let filled = now.saturating_duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + filled).min(self.burst) - 1.0;
        *at = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }
}

/// How long a stopping node waits for the connections it already took.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which new connections a node takes: at most [`MAX_CONNECTIONS`] open,
/// at most [`MAX_HANDSHAKES_PER_SOURCE`] of them still in the handshake
/// from any one address, and once authenticated at most
/// [`MAX_PER_MEMBER`] per member ([`MAX_PER_NODE_MEMBER`] per peer node).
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// (open connections, handshakes in progress per source address)
    state: Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
    /// Authenticated connections per member.
    members: Mutex<HashMap<String, usize>>,
}

impl Admission {
    /// Connections open now (admitted and not yet closed).
    pub(crate) fn open(&self) -> usize {
        self.state.lock().map_or(0, |s| s.0)
    }

    pub(crate) fn enter(this: &Arc<Self>, source: std::net::IpAddr) -> Option<Ticket> {
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
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: std::net::IpAddr,
    handshaking: bool,
    /// The authenticated member whose place this connection holds.
    member: Option<String>,
}

impl Ticket {
    /// Take one of `member`'s places (its role sets how many it has);
    /// false when it holds them all, and the connection is then closed.
    pub(crate) fn authenticated(&mut self, member: &str, role: &str) -> bool {
        let cap = if role == kexin_engine::identity::Role::Node.as_str() {
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

    pub(crate) fn handshake_over(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_queries_past_the_pace_wait_and_others_do_not() {
        // 60 a minute: one a second, bursts of 15.
        let pace = Pace::new(60);
        let t0 = Instant::now();
        for _ in 0..15 {
            assert_eq!(pace.reserve("mallory", t0), Duration::ZERO);
        }
        // The 16th waits a second, the 17th two: reserved in turn.
        assert_eq!(pace.reserve("mallory", t0), Duration::from_secs(1));
        assert_eq!(pace.reserve("mallory", t0), Duration::from_secs(2));
        // Another member is not slowed by mallory's flood.
        assert_eq!(pace.reserve("alice", t0), Duration::ZERO);
        // Three seconds later the two reserved tokens are paid and a third
        // is there; the one after is a second away again.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(pace.reserve("mallory", later), Duration::ZERO);
        assert_eq!(pace.reserve("mallory", later), Duration::from_secs(1));
        // A long pause refills the bucket to its burst, no more.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..15 {
            assert_eq!(pace.reserve("mallory", much_later), Duration::ZERO);
        }
        assert!(pace.reserve("mallory", much_later) > Duration::ZERO);
        // 0: no pace.
        let off = Pace::new(0);
        for _ in 0..1000 {
            assert_eq!(off.reserve("mallory", t0), Duration::ZERO);
        }
    }

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
