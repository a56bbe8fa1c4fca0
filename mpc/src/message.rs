//! Peer messages: a size-limited binary codec, and the receive-side check
//! that binds every message to (session, round, sender).
//!
//! Wire format (all integers little-endian):
//!
//! ```text
//! version u8 = 1 | session [32] | round u32 | sender u16 | len u32 | payload [len]
//! ```
//!
//! Decoding rejects a wrong version, truncation, a length over the limit
//! and trailing bytes. [`Inbox`] accepts exactly one message per (sender,
//! round) of its session, from known senders, for the round it expects:
//! replays, reorderings and strangers are errors, which abort the round.

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 32 + 4 + 2 + 4;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub session: [u8; 32],
    pub round: u32,
    pub sender: u16,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.push(VERSION);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decode untrusted bytes; `max_payload` bounds the payload.
    pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Message> {
        if bytes.len() < HEADER {
            return Err(Error::Malformed("truncated header"));
        }
        if bytes[0] != VERSION {
            return Err(Error::Malformed("unknown version"));
        }
        let mut session = [0u8; 32];
        session.copy_from_slice(&bytes[1..33]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let round = u32_at(33);
        let sender = u16::from_le_bytes([bytes[37], bytes[38]]);
        let len = u32_at(39) as usize;
        if len > max_payload {
            return Err(Error::Malformed("payload over the limit"));
        }
        let rest = &bytes[HEADER..];
        if rest.len() < len {
            return Err(Error::Malformed("truncated payload"));
        }
        if rest.len() > len {
            return Err(Error::Malformed("trailing bytes"));
        }
        Ok(Message {
            session,
            round,
            sender,
            payload: rest.to_vec(),
        })
    }
}

/// The receive side of one session: which senders exist and which round
/// each is at.
#[derive(Debug, Clone)]
pub struct Inbox {
    session: [u8; 32],
    /// Per known sender: the next round expected from it.
    next: std::collections::BTreeMap<u16, u32>,
    /// Per sender, when set: the only rounds it may send, in order (a
    /// protocol where each party talks to a few others only).
    schedule: std::collections::BTreeMap<u16, Vec<u32>>,
    max_payload: usize,
}

impl Inbox {
    pub fn new(session: [u8; 32], senders: &[u16], max_payload: usize) -> Self {
        Inbox {
            session,
            next: senders.iter().map(|&s| (s, 0)).collect(),
            schedule: Default::default(),
            max_payload,
        }
    }

    /// An inbox where each sender may send exactly the listed rounds, in
    /// that order (`next` counts how many it sent).
    pub fn scheduled(session: [u8; 32], schedule: &[(u16, Vec<u32>)], max_payload: usize) -> Self {
        Inbox {
            session,
            next: schedule.iter().map(|(s, _)| (*s, 0)).collect(),
            schedule: schedule.iter().cloned().collect(),
            max_payload,
        }
    }

    /// Decode and check one message; it must be the next round of a known
    /// sender in this session.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Message> {
        let m = Message::decode(bytes, self.max_payload)?;
        if m.session != self.session {
            return Err(Error::Unexpected("another session"));
        }
        let Some(next) = self.next.get_mut(&m.sender) else {
            return Err(Error::Unexpected("unknown sender"));
        };
        if let Some(rounds) = self.schedule.get(&m.sender) {
            let Some(want) = rounds.get(*next as usize) else {
                return Err(Error::Unexpected("replayed round"));
            };
            if m.round < *want {
                return Err(Error::Unexpected("replayed round"));
            }
            if m.round > *want {
                return Err(Error::Unexpected("out-of-order round"));
            }
            *next += 1;
            return Ok(m);
        }
        if m.round < *next {
            return Err(Error::Unexpected("replayed round"));
        }
        if m.round > *next {
            return Err(Error::Unexpected("out-of-order round"));
        }
        *next += 1;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(round: u32, sender: u16) -> Message {
        Message {
            session: [9; 32],
            round,
            sender,
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_scheduled_inbox_takes_only_the_listed_rounds_in_order() {
        let mut inbox = Inbox::scheduled([9; 32], &[(1, vec![0, 2]), (2, vec![1])], 1024);
        assert_eq!(
            inbox.accept(&msg(2, 1).encode()),
            Err(Error::Unexpected("out-of-order round"))
        );
        assert!(inbox.accept(&msg(0, 1).encode()).is_ok());
        assert!(inbox.accept(&msg(2, 1).encode()).is_ok());
        assert_eq!(
            inbox.accept(&msg(2, 1).encode()),
            Err(Error::Unexpected("replayed round"))
        );
        assert_eq!(
            inbox.accept(&msg(0, 2).encode()),
            Err(Error::Unexpected("replayed round"))
        );
        assert!(inbox.accept(&msg(1, 2).encode()).is_ok());
        assert_eq!(
            inbox.accept(&msg(0, 3).encode()),
            Err(Error::Unexpected("unknown sender"))
        );
    }

    #[test]
    fn replays_reorderings_and_strangers_are_rejected() {
        let mut inbox = Inbox::new([9; 32], &[1, 2], 1024);
        assert!(inbox.accept(&msg(0, 1).encode()).is_ok());
        assert_eq!(
            inbox.accept(&msg(0, 1).encode()),
            Err(Error::Unexpected("replayed round"))
        );
        assert_eq!(
            inbox.accept(&msg(2, 2).encode()),
            Err(Error::Unexpected("out-of-order round"))
        );
        assert_eq!(
            inbox.accept(&msg(0, 3).encode()),
            Err(Error::Unexpected("unknown sender"))
        );
        let mut other = msg(0, 2);
        other.session = [8; 32];
        assert_eq!(
            inbox.accept(&other.encode()),
            Err(Error::Unexpected("another session"))
        );
        assert!(inbox.accept(&msg(0, 2).encode()).is_ok());
        assert!(inbox.accept(&msg(1, 1).encode()).is_ok());
    }

    #[test]
    fn size_limits_and_trailing_bytes() {
        let mut bytes = msg(0, 1).encode();
        assert!(Message::decode(&bytes, 2).is_err(), "over the limit");
        bytes.push(0);
        assert_eq!(
            Message::decode(&bytes, 1024),
            Err(Error::Malformed("trailing bytes"))
        );
        assert!(Message::decode(&bytes[..10], 1024).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes, 64);
        }

        #[test]
        fn encode_decode_round_trips(round in any::<u32>(), sender in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let m = Message { session: [5; 32], round, sender, payload };
            prop_assert_eq!(Message::decode(&m.encode(), 100).unwrap(), m);
        }
    }
}
