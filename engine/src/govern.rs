//! Governance as data and rules: the space's registry of certificates and
//! consent receipts ([`registry`], [`consent`]), data-use contracts and
//! their states ([`contract`]), results held for review ([`airlock`]) and
//! individuals' Prio3 contributions ([`contribution`]) and disputes over
//! audited actions ([`dispute`]), and data holders' statements of what
//! their nodes answered ([`accounting`]). The node's side of
//! each (the `impl Node` services) is in `node/`.

pub mod accounting;
pub mod airlock;
pub mod consent;
pub mod contract;
pub mod contribution;
pub mod dispute;
pub mod registry;
