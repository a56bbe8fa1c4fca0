//! Sandbox errors. A [`Fault`] is the fixed reason a module or a call was
//! refused; it never carries guest output, input values or guest messages, so
//! the engine can show it to a researcher as it is.

/// Why a module was refused or a call failed. Closed set; the engine maps each
/// to a stable `KX-UDF-*` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// Malformed bytes, larger than the module size limit, compile time limit
    /// reached, or a module shape the pool cannot hold.
    #[error("the module is malformed, too large, or took too long to compile")]
    Module,
    /// The module imports something (WASI, host functions, memories) the kexin
    /// ABI does not provide.
    #[error("the module imports something the kexin ABI does not provide")]
    Import,
    /// `kexin_manifest` is missing, too large, not valid JSON, or declares
    /// something the host cannot accept.
    #[error("the module's manifest is missing or invalid")]
    Manifest,
    /// A declared function's export has the wrong WebAssembly type, or a call
    /// passes arguments the declaration does not accept.
    #[error("the call does not match the function's declared signature")]
    Signature,
    /// Fuel or the call's time limit ran out (infinite loops end here).
    #[error("the UDF ran out of fuel or time")]
    Fuel,
    /// Linear memory or table growth past the limit.
    #[error("the UDF exceeded its memory or table limit")]
    Memory,
    /// Wasm stack exhausted (unbounded recursion).
    #[error("the UDF exhausted its stack")]
    Stack,
    /// Any other trap: `unreachable`, integer division by zero, out-of-bounds
    /// access, or the guest reporting a failure.
    #[error("the UDF trapped")]
    Trap,
    /// The guest's output failed validation: lengths, pointers, offsets,
    /// types, UTF-8, boolean bytes or the declared domain.
    #[error("the UDF's output failed validation")]
    Output,
    /// No instance slot is free in the node's pool; retry later.
    #[error("the sandbox has no free instance slot")]
    Busy,
}

/// Setting up the sandbox itself failed (a kexin or host problem, not the
/// module's fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("sandbox limits: {0}")]
    Limits(&'static str),
    #[error("wasmtime setup failed: {0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
