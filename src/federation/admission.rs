//! Which connections a node takes, before and after the TLS handshake: a
//! flood from one address or one member cannot take the slots its peers
//! need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
