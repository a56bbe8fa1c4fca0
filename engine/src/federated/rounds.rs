//! The federated protocols as role types, with no transport.
//!
//! Each protocol is a set of roles ([`Role`]); a node plays one role per
//! session. A role is driven by two calls: [`Role::start`] once the
//! researcher's start signal arrived, then [`Role::step`] with each peer
//! message, in the order the messages arrive. Every call answers one
//! [`Step`]: the messages to send, then whether to wait for the next one
//! ([`Then::Await`]), the role's result ([`Then::Done`]) or the fixed rule
//! it aborted with ([`Then::Abort`]). A role never touches a socket, a
//! thread or a clock: the node server (`src/federation/`) pumps bytes
//! between links and roles and turns a silent peer into an abort, and
//! [`drive`] runs every role of a session in memory, which is how each
//! protocol's tests run all parties, including their abort paths.
//!
//! | protocol | roles | module |
//! |---|---|---|
//! | joint gate (secret sharing, ≥ 3 nodes) | [`JointGate`] | [`joint_gate`] |
//! | FHE gate | [`FheParty`] as aggregator, key holder or contributor | [`fhe_gate`] |
//! | Prio3 collection (2 aggregators) | [`Collect`] as leader or helper | [`collect`] |
//! | PSI cardinality | [`PsiCount`] | [`psi`] |
//! | PSI sum | [`PsiSum`] as first or second | [`psi`] |
//!
//! Messages are [`Message`]s (the size-limited codec of `kexin-mpc`), bound
//! to (session, round, sender); payloads are encoded and decoded by the
//! payload types of each protocol's module, never split by hand elsewhere.

pub mod collect;
pub mod fhe_gate;
pub mod joint_gate;
pub mod psi;

use std::collections::VecDeque;
use std::time::Duration;

use kexin_mpc::message::Message;

use crate::error::Code;

pub use collect::Collect;
pub use fhe_gate::FheParty;
pub use joint_gate::JointGate;
pub use psi::{PsiCount, PsiSum};

/// The largest payload of a peer message: shares of 10 000 cells × 6
/// totals, or a PSI set of a million blinded points. The transport's frame
/// limit is the same number.
pub const MAX_PAYLOAD: usize = 40 << 20;

/// One message for one party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub to: u16,
    pub message: Message,
}

/// How long the role waits for its next message. The wait starts when the
/// role last sent something (or started) and is the transport's round
/// timeout, times `rounds`, plus `compute` (work another party does before
/// it answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    pub rounds: u32,
    pub compute: Duration,
}

impl Patience {
    /// One round timeout.
    pub const ROUND: Patience = Patience {
        rounds: 1,
        compute: Duration::ZERO,
    };

    /// The wait for a round-timeout `t`.
    pub fn wait(&self, t: Duration) -> Duration {
        t * self.rounds + self.compute
    }
}

/// Why a role stopped without a result: a fixed code and rule (never
/// data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub code: Code,
    pub rule: &'static str,
}

impl Abort {
    /// A federated abort (`KX-FED-ABORT`).
    pub const fn fed(rule: &'static str) -> Abort {
        Abort {
            code: Code::FedAbort,
            rule,
        }
    }
}

/// A peer that sent nothing in time, or whose link closed.
pub const TIMED_OUT: Abort = Abort::fed("a party timed out or disconnected");

/// What a role does next.
#[derive(Debug)]
pub enum Then<T> {
    /// Wait for the next peer message.
    Await(Patience),
    Done(T),
    Abort(Abort),
}

/// The answer to one call: messages to send (best effort when the role
/// aborts: they tell the others to stop waiting), then what comes next.
#[derive(Debug)]
pub struct Step<T> {
    pub send: Vec<Outbound>,
    pub then: Then<T>,
}

impl<T> Step<T> {
    pub fn wait(send: Vec<Outbound>, patience: Patience) -> Step<T> {
        Step {
            send,
            then: Then::Await(patience),
        }
    }

    pub fn done(send: Vec<Outbound>, out: T) -> Step<T> {
        Step {
            send,
            then: Then::Done(out),
        }
    }

    pub fn abort(a: Abort) -> Step<T> {
        Step {
            send: vec![],
            then: Then::Abort(a),
        }
    }
}

impl<T> From<Result<Step<T>, Abort>> for Step<T> {
    fn from(r: Result<Step<T>, Abort>) -> Step<T> {
        r.unwrap_or_else(Step::abort)
    }
}

/// One party of one session of a protocol.
pub trait Role {
    type Output;
    /// The first messages, once every party is known to take part.
    fn start(&mut self) -> Step<Self::Output>;
    /// One peer message (the transport checked only that it came from the
    /// party its sender index names; the role checks the rest).
    fn step(&mut self, inbound: &[u8]) -> Step<Self::Output>;
}

/// The fixed rule for an error of the protocol library.
pub fn mpc_rule(e: kexin_mpc::Error) -> Abort {
    use kexin_mpc::Error as E;
    Abort::fed(match e {
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
    })
}

/// `payload` as round `round` of `from` in `session`, for party `to`.
pub(crate) fn outbound(
    session: [u8; 32],
    from: u16,
    to: u16,
    round: u32,
    payload: Vec<u8>,
) -> Outbound {
    Outbound {
        to,
        message: Message {
            session,
            round,
            sender: from,
            payload,
        },
    }
}

/// Run every role of one session in memory (role `i` is party `i`) until
/// each is done or aborted. Messages are delivered first in, first out;
/// `network` sees each one before delivery and may change it, or drop it
/// by returning `false`. A role still waiting when nothing is in flight
/// aborts as if its peers timed out.
pub fn drive<T>(
    roles: &mut [&mut dyn Role<Output = T>],
    mut network: impl FnMut(&mut Outbound) -> bool,
) -> Vec<Result<T, Abort>> {
    let mut ends: Vec<Option<Result<T, Abort>>> = roles.iter().map(|_| None).collect();
    let mut flight: VecDeque<Outbound> = VecDeque::new();
    let mut settle = |i: usize,
                      step: Step<T>,
                      ends: &mut Vec<Option<Result<T, Abort>>>,
                      flight: &mut VecDeque<Outbound>| {
        for mut o in step.send {
            if network(&mut o) {
                flight.push_back(o);
            }
        }
        match step.then {
            Then::Await(_) => {}
            Then::Done(t) => ends[i] = Some(Ok(t)),
            Then::Abort(a) => ends[i] = Some(Err(a)),
        }
    };
    for (i, role) in roles.iter_mut().enumerate() {
        let s = role.start();
        settle(i, s, &mut ends, &mut flight);
    }
    while let Some(o) = flight.pop_front() {
        let to = o.to as usize;
        if to >= roles.len() || ends[to].is_some() {
            continue;
        }
        let s = roles[to].step(&o.message.encode());
        settle(to, s, &mut ends, &mut flight);
    }
    ends.into_iter()
        .map(|e| e.unwrap_or(Err(TIMED_OUT)))
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small exact plan for the gates' tests: three cells of a public
    //! domain, each with (persons, rows), released as (key, rows) when the
    //! joint person count reaches 10.
    use crate::dp::{Mechanism, Output, Stat};
    use crate::federated::JointPlan;
    use crate::gate::Cell;
    use crate::policy::OutputRules;

    pub fn plan() -> JointPlan {
        JointPlan {
            mechanism: Mechanism {
                args: vec![],
                stats: vec![Stat::Persons, Stat::Rows],
                scales: vec![],
                outputs: vec![Output::Key(0), Output::Count(Stat::Rows)],
                keys: 1,
                domain: None,
                threshold: 0.0,
                epsilon: 0.0,
                delta: 0.0,
            },
            columns: vec!["site".into(), "rows".into()],
            cells: ["a", "b", "c"]
                .iter()
                .map(|k| vec![Cell::Text(k.to_string())])
                .collect(),
            exact: true,
            output: OutputRules {
                min_persons: 10,
                round_to: 1,
                decimals: 2,
                dominance: None,
            },
            bounding: (1, 1),
            digest: "test".into(),
        }
    }

    /// Three parties' partials: cell a passes jointly (6+4+3 persons),
    /// cell b misses (3+3+3), cell c passes (20+0+1).
    pub fn partials() -> Vec<Vec<i128>> {
        vec![
            vec![6, 9, 3, 4, 20, 31],
            vec![4, 5, 3, 3, 0, 0],
            vec![3, 3, 3, 5, 1, 2],
        ]
    }

    /// The rows a pooled computation releases from [`partials`].
    pub fn pooled() -> Vec<Vec<Cell>> {
        vec![
            vec![Cell::Text("a".into()), Cell::Int(17)],
            vec![Cell::Text("c".into()), Cell::Int(33)],
        ]
    }
}
