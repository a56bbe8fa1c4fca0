//! Resource limits for untrusted modules.
//!
//! [`Limits`] holds the node-wide ceilings (fixed when the wasmtime engine is
//! built: stack, module size, compile time, pool sizes) and the default
//! [`CallLimits`] every call runs under. A scene may lower — never raise — the
//! call limits with a [`CallLimitsOverride`].

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Per-call limits: what one query's calls into one module may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Table elements per instance.
    pub table_elements: usize,
    /// Fuel for a call before counting rows (setup, manifest, finalize).
    pub fuel_per_call: u64,
    /// Extra fuel per input row of a batch.
    pub fuel_per_row: u64,
    /// Wall-clock limit of one call, enforced by epoch interruption.
    pub call_timeout: Duration,
    /// Largest output buffer (values plus offsets) one call may return.
    pub output_bytes: usize,
}

/// Node-wide limits. Build with [`Limits::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest module accepted, bytes.
    pub max_module_bytes: usize,
    /// Longest a module may take to compile.
    pub compile_timeout: Duration,
    /// Wasm stack per call, bytes (deep recursion traps here).
    pub stack_bytes: usize,
    /// Instance slots in the pooling allocator: concurrent instances across
    /// all queries of this node.
    pub instance_slots: u32,
    /// Ceiling for any scene's `memory_bytes` (the pool reserves this much
    /// per slot).
    pub max_memory_bytes: usize,
    /// Ceiling for any scene's `table_elements`.
    pub max_table_elements: usize,
    /// What calls run under unless the scene lowers it.
    pub call: CallLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_module_bytes: 8 << 20,
            compile_timeout: Duration::from_secs(20),
            stack_bytes: 512 << 10,
            instance_slots: 128,
            max_memory_bytes: 256 << 20,
            max_table_elements: 100_000,
            call: CallLimits {
                memory_bytes: 64 << 20,
                table_elements: 10_000,
                fuel_per_call: 50_000_000,
                fuel_per_row: 100_000,
                call_timeout: Duration::from_secs(5),
                output_bytes: 64 << 20,
            },
        }
    }
}

impl Limits {
    /// A builder starting from the documented defaults:
    ///
    /// | limit | default |
    /// |---|---|
    /// | `max_module_bytes` | 8 MiB |
    /// | `compile_timeout` | 20 s |
    /// | `stack_bytes` | 512 KiB |
    /// | `instance_slots` | 128 |
    /// | `max_memory_bytes` | 256 MiB |
    /// | `max_table_elements` | 100 000 |
    /// | `memory_bytes` (per call) | 64 MiB |
    /// | `table_elements` (per call) | 10 000 |
    /// | `fuel_per_call` | 50 000 000 |
    /// | `fuel_per_row` | 100 000 |
    /// | `call_timeout` | 5 s |
    /// | `output_bytes` | 64 MiB |
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder(Limits::default())
    }

    /// Apply a scene's override; refused if it raises anything above this
    /// node's ceilings.
    pub fn call_limits(&self, o: &CallLimitsOverride) -> Result<CallLimits> {
        let d = self.call;
        let c = CallLimits {
            memory_bytes: o
                .memory_mb
                .map_or(d.memory_bytes, |m| m.saturating_mul(1 << 20)),
            table_elements: o.table_elements.unwrap_or(d.table_elements),
            fuel_per_call: o.fuel_per_call.unwrap_or(d.fuel_per_call),
            fuel_per_row: o.fuel_per_row.unwrap_or(d.fuel_per_row),
            call_timeout: o
                .call_timeout_ms
                .map_or(d.call_timeout, Duration::from_millis),
            output_bytes: o
                .output_mb
                .map_or(d.output_bytes, |m| m.saturating_mul(1 << 20)),
        };
        if c.memory_bytes > self.max_memory_bytes || c.memory_bytes == 0 {
            return Err(Error::Limits(
                "memory_mb must be between 1 and the node's ceiling",
            ));
        }
        if c.table_elements > self.max_table_elements {
            return Err(Error::Limits("table_elements exceeds the node's ceiling"));
        }
        if c.fuel_per_call > d.fuel_per_call || c.fuel_per_row > d.fuel_per_row {
            return Err(Error::Limits("fuel may only be lowered"));
        }
        if c.call_timeout > d.call_timeout || c.call_timeout.is_zero() {
            return Err(Error::Limits(
                "call_timeout_ms must be between 1 and the node's default",
            ));
        }
        if c.output_bytes > d.output_bytes || c.output_bytes == 0 {
            return Err(Error::Limits(
                "output_mb must be between 1 and the node's default",
            ));
        }
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if self.call.memory_bytes > self.max_memory_bytes {
            return Err(Error::Limits("memory_bytes above max_memory_bytes"));
        }
        if self.call.table_elements > self.max_table_elements {
            return Err(Error::Limits("table_elements above max_table_elements"));
        }
        if self.max_memory_bytes > (4usize << 30) {
            return Err(Error::Limits("max_memory_bytes above 4 GiB (wasm32)"));
        }
        if self.instance_slots == 0 || self.stack_bytes < (64 << 10) {
            return Err(Error::Limits("instance_slots or stack_bytes too small"));
        }
        Ok(())
    }
}

/// Builder for [`Limits`]; every setter documents its default on [`Limits::builder`].
#[derive(Debug, Clone)]
pub struct LimitsBuilder(Limits);

impl LimitsBuilder {
    pub fn max_module_bytes(mut self, v: usize) -> Self {
        self.0.max_module_bytes = v;
        self
    }
    pub fn compile_timeout(mut self, v: Duration) -> Self {
        self.0.compile_timeout = v;
        self
    }
    pub fn stack_bytes(mut self, v: usize) -> Self {
        self.0.stack_bytes = v;
        self
    }
    pub fn instance_slots(mut self, v: u32) -> Self {
        self.0.instance_slots = v;
        self
    }
    pub fn max_memory_bytes(mut self, v: usize) -> Self {
        self.0.max_memory_bytes = v;
        self
    }
    pub fn max_table_elements(mut self, v: usize) -> Self {
        self.0.max_table_elements = v;
        self
    }
    pub fn memory_bytes(mut self, v: usize) -> Self {
        self.0.call.memory_bytes = v;
        self
    }
    pub fn table_elements(mut self, v: usize) -> Self {
        self.0.call.table_elements = v;
        self
    }
    pub fn fuel_per_call(mut self, v: u64) -> Self {
        self.0.call.fuel_per_call = v;
        self
    }
    pub fn fuel_per_row(mut self, v: u64) -> Self {
        self.0.call.fuel_per_row = v;
        self
    }
    pub fn call_timeout(mut self, v: Duration) -> Self {
        self.0.call.call_timeout = v;
        self
    }
    pub fn output_bytes(mut self, v: usize) -> Self {
        self.0.call.output_bytes = v;
        self
    }
    /// Check the combination and build.
    pub fn build(self) -> Result<Limits> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// A scene's `udf_limits` table: each field lowers one call limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimitsOverride {
    pub memory_mb: Option<usize>,
    pub table_elements: Option<usize>,
    pub fuel_per_call: Option<u64>,
    pub fuel_per_row: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub output_mb: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_may_lower_but_not_raise() {
        let l = Limits::default();
        let low = CallLimitsOverride {
            memory_mb: Some(16),
            fuel_per_row: Some(10),
            ..Default::default()
        };
        let c = l.call_limits(&low).unwrap();
        assert_eq!(c.memory_bytes, 16 << 20);
        assert_eq!(c.fuel_per_row, 10);
        assert_eq!(c.fuel_per_call, l.call.fuel_per_call);
        let high = CallLimitsOverride {
            memory_mb: Some(1024),
            ..Default::default()
        };
        assert!(l.call_limits(&high).is_err());
        let slow = CallLimitsOverride {
            call_timeout_ms: Some(60_000),
            ..Default::default()
        };
        assert!(l.call_limits(&slow).is_err());
    }

    #[test]
    fn builder_rejects_inconsistent_limits() {
        assert!(Limits::builder().memory_bytes(1 << 30).build().is_err());
        assert!(Limits::builder().instance_slots(0).build().is_err());
        assert!(Limits::builder().memory_bytes(8 << 20).build().is_ok());
    }
}
