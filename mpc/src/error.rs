//! Errors of the protocol state machines. Every variant aborts the round:
//! nothing is released from a round that saw one.

/// Why a protocol step was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer parties than an additive aggregate needs (see [`crate::MIN_PARTIES`]).
    #[error("at least {min} parties are needed, got {got}")]
    TooFewParties { min: usize, got: usize },
    /// Share vectors or point lists of different lengths.
    #[error("inputs of different lengths")]
    LengthMismatch,
    /// A byte string that is not a canonical ristretto255 encoding (RFC 9496
    /// §4.3.1), or the identity where a blinded item is expected.
    #[error("invalid group element encoding")]
    InvalidPoint,
    /// A byte string that is not the canonical encoding of a scalar (a share
    /// must be reduced modulo ℓ).
    #[error("invalid share encoding")]
    InvalidScalar,
    /// A value outside the fixed-point range.
    #[error("value out of the fixed-point range")]
    OutOfRange,
    /// A message that does not decode: too large, truncated, trailing bytes.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A message for another session, from an unknown sender, or replayed or
    /// out of order.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// A peer did not answer within the round's deadline, or went away.
    #[error("a party timed out or disconnected")]
    Timeout,
    /// A protocol step out of order on this side (a bug or a misuse).
    #[error("protocol step out of order: {0}")]
    State(&'static str),
    /// An FHE object refused: over its size limit, not conformant with the
    /// parameters in use, or outputs that were not gated.
    #[error("FHE: {0}")]
    Fhe(&'static str),
    /// A Prio3 report or aggregation step refused (an invalid proof, a
    /// share that does not decode).
    #[error("Prio3: {0}")]
    Prio(&'static str),
    /// The operating system's random source failed.
    #[error("no randomness available")]
    Randomness,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
