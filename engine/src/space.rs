//! The policy model: `space.toml` read into [`policy::Space`] (datasets,
//! column grades, kinds, masks and bounds, scenes, members, limits).
//! Members' public keys are parsed with the trust wing; nothing above it
//! is read.

pub mod policy;
