//! The wasmtime host: one engine per node, modules loaded and checked once,
//! and a fresh set of instances for every query.
//!
//! Every call runs with fuel (`fuel_per_call + fuel_per_row × rows`) and an
//! epoch deadline (a ticker thread advances the engine's epoch every
//! [`TICK`]); memory and table growth go through a limiter that records which
//! limit fired, so the error is classified exactly.
//!
//! Why one file of about 700 lines: loading, the limiter, calls and fault
//! classification share one store state and its private fields; cut apart,
//! each piece would have to open those fields to the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_array::ArrayRef;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, ModuleExport,
    OptLevel, PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

use crate::abi::{self, CallImage};
use crate::error::{Error, Fault, Result};
use crate::limits::{CallLimits, Limits};
use crate::manifest::{DomainCheck, Function, Kind, Manifest, Type};

/// How often the epoch ticker advances the engine's epoch.
pub const TICK: Duration = Duration::from_millis(5);

/// The node's sandbox: engine, empty linker, epoch ticker.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    ticker: Option<Ticker>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut t) = self.ticker.take() {
            t.stop.store(true, Ordering::Relaxed);
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Per-store state: the limits and which one fired.
struct HostState {
    memory_bytes: usize,
    table_elements: usize,
    fired: Option<Fault>,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.fired = Some(Fault::Memory);
            // Trap rather than return -1: a guest that ignores a failed grow
            // must not keep running.
            return Err(wasmtime::Error::msg("memory limit"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.fired = Some(Fault::Memory);
            return Err(wasmtime::Error::msg("table limit"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        1
    }
}

impl Sandbox {
    /// Build the engine (Cranelift, fuel, epochs, pooling allocator, no
    /// proposals beyond what Rust's wasm32 output uses) and start the ticker.
    pub fn new(limits: Limits) -> Result<Sandbox> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(limits.instance_slots)
            .total_memories(limits.instance_slots)
            .total_tables(limits.instance_slots)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(limits.max_memory_bytes)
            .table_elements(limits.max_table_elements)
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(16 << 10);
        let mut c = Config::new();
        c.cranelift_opt_level(OptLevel::Speed)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.stack_bytes)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .wasm_gc(false)
            .wasm_stack_switching(false)
            .parallel_compilation(true)
            .memory_init_cow(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| Error::Setup(e.to_string()))?;
        // The ABI provides no host functions: any import fails to resolve.
        let linker = Linker::new(&engine);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("kexin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Setup(e.to_string()))?
        };
        Ok(Sandbox {
            engine,
            linker,
            limits,
            ticker: Some(Ticker {
                stop,
                handle: Some(handle),
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Check and compile a module: size, compile time, imports, required
    /// exports and their types, then the manifest (read from a throwaway
    /// instance under the default call limits) and each declared function's
    /// exports.
    pub fn load(&self, bytes: &[u8]) -> std::result::Result<Module, Fault> {
        if bytes.len() > self.limits.max_module_bytes {
            return Err(Fault::Module);
        }
        let module = self.compile(bytes)?;
        if module.imports().len() != 0 {
            return Err(Fault::Import);
        }
        let func_ty = |name: &str| -> Option<(Vec<ValType>, Vec<ValType>)> {
            match module.get_export(name)? {
                wasmtime::ExternType::Func(f) => {
                    Some((f.params().collect(), f.results().collect()))
                }
                _ => None,
            }
        };
        let is = |v: &[ValType], want: &[&str]| {
            v.len() == want.len()
                && v.iter().zip(want).all(|(t, w)| match *w {
                    "i32" => matches!(t, ValType::I32),
                    _ => matches!(t, ValType::I64),
                })
        };
        let abi_ok = matches!(
            module.get_export("memory"),
            Some(wasmtime::ExternType::Memory(_))
        ) && func_ty("kexin_manifest")
            .is_some_and(|(p, r)| is(&p, &[]) && is(&r, &["i64"]))
            && func_ty("kexin_alloc").is_some_and(|(p, r)| is(&p, &["i32"]) && is(&r, &["i32"]))
            && func_ty("kexin_reset").is_some_and(|(p, r)| p.is_empty() && r.is_empty());
        if !abi_ok {
            return Err(Fault::Manifest);
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|_| Fault::Import)?;
        let index = |name: &str| module.get_export_index(name).ok_or(Fault::Manifest);
        let abi = Arc::new(AbiExports {
            memory: index("memory")?,
            alloc: index("kexin_alloc")?,
            reset: index("kexin_reset")?,
            functions: HashMap::new(),
        });
        let mut live = Live::new(&self.engine, &pre, &abi, self.limits.call)?;
        let manifest = live.manifest(&module, &self.limits.call)?;
        let mut functions = HashMap::new();
        for f in &manifest.functions {
            for (export, params) in f.exports() {
                let want = vec!["i32"; params];
                if !func_ty(&export).is_some_and(|(p, r)| is(&p, &want) && is(&r, &["i32"])) {
                    return Err(Fault::Signature);
                }
                functions.insert(export.clone(), index(&export)?);
            }
        }
        let abi = AbiExports {
            functions,
            ..(*abi).clone()
        };
        Ok(Module {
            inner: Arc::new(ModuleInner {
                abi: Arc::new(abi),
                digest: crate::module_digest(bytes),
                domains: manifest
                    .functions
                    .iter()
                    .filter_map(|f| f.domain_set().map(|d| (f.name.clone(), d)))
                    .collect(),
                manifest,
                engine: self.engine.clone(),
                pre,
            }),
        })
    }

    /// Compile on a helper thread so a pathological module cannot hold the
    /// caller past the compile-time limit (the thread finishes on its own).
    fn compile(&self, bytes: &[u8]) -> std::result::Result<wasmtime::Module, Fault> {
        let (tx, rx) = mpsc::channel();
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        std::thread::Builder::new()
            .name("kexin-compile".into())
            .spawn(move || {
                let _ = tx.send(wasmtime::Module::from_binary(&engine, &owned));
            })
            .map_err(|_| Fault::Busy)?;
        match rx.recv_timeout(self.limits.compile_timeout) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) | Err(_) => Err(Fault::Module),
        }
    }
}

/// A checked, compiled module. Cheap to clone.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

/// Export handles resolved once per module, so a new instance needs no
/// string lookups.
#[derive(Clone)]
struct AbiExports {
    memory: ModuleExport,
    alloc: ModuleExport,
    reset: ModuleExport,
    /// `kx_*` export name → handle.
    functions: HashMap<String, ModuleExport>,
}

struct ModuleInner {
    abi: Arc<AbiExports>,
    digest: String,
    manifest: Manifest,
    domains: HashMap<String, DomainCheck>,
    engine: Engine,
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("digest", &self.inner.digest)
            .field("manifest", &self.inner.manifest)
            .finish_non_exhaustive()
    }
}

impl Module {
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }
    /// A per-query session: instances are created on demand (one per
    /// concurrent caller) and dropped with the session.
    pub fn session(&self, limits: CallLimits) -> Session {
        Session {
            module: self.clone(),
            limits,
            idle: Mutex::new(Vec::new()),
            created: AtomicUsize::new(0),
        }
    }
}

/// One query's instances of one module.
pub struct Session {
    module: Module,
    limits: CallLimits,
    idle: Mutex<Vec<Live>>,
    created: AtomicUsize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("module", &self.module.inner.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Instances this session has created so far.
    pub fn instances_created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    fn function(&self, name: &str, kind: Kind) -> std::result::Result<&Function, Fault> {
        self.module
            .inner
            .manifest
            .function(name)
            .filter(|f| f.kind == kind)
            .ok_or(Fault::Signature)
    }

    /// Run `f` on an idle instance (or a new one). An instance whose call
    /// failed is dropped, never reused.
    fn with<R>(
        &self,
        f: impl FnOnce(&mut Live) -> std::result::Result<R, Fault>,
    ) -> std::result::Result<R, Fault> {
        let pooled = self.idle.lock().map_err(|_| Fault::Busy)?.pop();
        let mut live = match pooled {
            Some(l) => l,
            None => {
                self.created.fetch_add(1, Ordering::Relaxed);
                Live::new(
                    &self.module.inner.engine,
                    &self.module.inner.pre,
                    &self.module.inner.abi,
                    self.limits,
                )?
            }
        };
        let r = f(&mut live)?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(live);
        }
        Ok(r)
    }

    /// Call scalar function `name` over one batch. `args` must already have
    /// the declared Arrow types.
    pub fn call_scalar(
        &self,
        name: &str,
        args: &[ArrayRef],
        rows: usize,
    ) -> std::result::Result<ArrayRef, Fault> {
        let f = self.function(name, Kind::Scalar)?;
        let image = CallImage::new(&f.args, args, rows)?;
        let domain = self.module.inner.domains.get(name);
        self.with(|live| {
            live.begin(&self.limits, rows)?;
            let base = live.alloc(image.len)?;
            live.write(base, &image)?;
            live.call(&format!("kx_{name}"), &[base])?;
            live.output(base, rows, f.returns, domain, &self.limits)
        })
    }

    /// Aggregate `name`, checking that every given state has its declared
    /// size.
    fn aggregate(&self, name: &str, states: &[&[u8]]) -> std::result::Result<&Function, Fault> {
        let f = self.function(name, Kind::Aggregate)?;
        if states.iter().any(|s| s.len() != f.state_bytes as usize) {
            return Err(Fault::Signature);
        }
        Ok(f)
    }

    /// A fresh aggregate state.
    pub fn aggregate_init(&self, name: &str) -> std::result::Result<Vec<u8>, Fault> {
        let f = self.function(name, Kind::Aggregate)?;
        let n = f.state_bytes as usize;
        self.with(|live| {
            live.begin(&self.limits, 0)?;
            let st = live.alloc(n)?;
            live.call(&format!("kx_{name}_init"), &[st])?;
            live.read(st, n)
        })
    }

    /// Fold one batch into `state`.
    pub fn aggregate_update(
        &self,
        name: &str,
        state: &mut Vec<u8>,
        args: &[ArrayRef],
        rows: usize,
    ) -> std::result::Result<(), Fault> {
        let f = self.aggregate(name, &[state])?;
        let n = state.len();
        let image = CallImage::new(&f.args, args, rows)?;
        *state = self.with(|live| {
            live.begin(&self.limits, rows)?;
            let st = live.stage(state)?;
            let base = live.alloc(image.len)?;
            live.write(base, &image)?;
            live.call(&format!("kx_{name}_update"), &[st, base])?;
            live.read(st, n)
        })?;
        Ok(())
    }

    /// Merge `other` into `state` (partial aggregates from other partitions).
    pub fn aggregate_merge(
        &self,
        name: &str,
        state: &mut Vec<u8>,
        other: &[u8],
    ) -> std::result::Result<(), Fault> {
        self.aggregate(name, &[state, other])?;
        let n = state.len();
        *state = self.with(|live| {
            live.begin(&self.limits, 0)?;
            let st = live.stage(state)?;
            let ot = live.stage(other)?;
            live.call(&format!("kx_{name}_merge"), &[st, ot])?;
            live.read(st, n)
        })?;
        Ok(())
    }

    /// The aggregate's result: a one-row array of the declared type.
    pub fn aggregate_finalize(
        &self,
        name: &str,
        state: &[u8],
    ) -> std::result::Result<ArrayRef, Fault> {
        let f = self.aggregate(name, &[state])?;
        let image = CallImage::empty(1);
        self.with(|live| {
            live.begin(&self.limits, 1)?;
            let st = live.stage(state)?;
            let base = live.alloc(image.len)?;
            live.write(base, &image)?;
            live.call(&format!("kx_{name}_finalize"), &[st, base])?;
            live.output(base, 1, f.returns, None, &self.limits)
        })
    }
}

/// One live instance with its own store.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    reset: TypedFunc<(), ()>,
    abi: Arc<AbiExports>,
    funcs: HashMap<String, wasmtime::Func>,
    instance: wasmtime::Instance,
}

impl Live {
    fn new(
        engine: &Engine,
        pre: &InstancePre<HostState>,
        abi: &Arc<AbiExports>,
        limits: CallLimits,
    ) -> std::result::Result<Live, Fault> {
        let mut store = Store::new(
            engine,
            HostState {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
                fired: None,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.epoch_deadline_trap();
        // A start function runs during instantiation: it gets the same
        // budget as a call.
        set_budget(&mut store, &limits, 0)?;
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => {
                // A limit or a trap in the start function is the module's
                // fault; anything else (no free pool slot) is the node's.
                let guest = store.data().fired.is_some() || e.downcast_ref::<Trap>().is_some();
                return Err(if guest {
                    classify(&mut store, &e)
                } else {
                    Fault::Busy
                });
            }
        };
        let memory = instance
            .get_module_export(&mut store, &abi.memory)
            .and_then(|e| e.into_memory())
            .ok_or(Fault::Manifest)?;
        let func = |store: &mut Store<HostState>, e: &ModuleExport| {
            instance
                .get_module_export(&mut *store, e)
                .and_then(|e| e.into_func())
                .ok_or(Fault::Manifest)
        };
        let alloc = func(&mut store, &abi.alloc)?
            .typed::<u32, u32>(&store)
            .map_err(|_| Fault::Manifest)?;
        let reset = func(&mut store, &abi.reset)?
            .typed::<(), ()>(&store)
            .map_err(|_| Fault::Manifest)?;
        Ok(Live {
            store,
            memory,
            alloc,
            reset,
            abi: Arc::clone(abi),
            funcs: HashMap::new(),
            instance,
        })
    }

    fn manifest(
        &mut self,
        module: &wasmtime::Module,
        limits: &CallLimits,
    ) -> std::result::Result<Manifest, Fault> {
        set_budget(&mut self.store, limits, 0)?;
        let export = module
            .get_export_index("kexin_manifest")
            .ok_or(Fault::Manifest)?;
        let manifest = self
            .instance
            .get_module_export(&mut self.store, &export)
            .and_then(|e| e.into_func())
            .ok_or(Fault::Manifest)?
            .typed::<(), u64>(&self.store)
            .map_err(|_| Fault::Manifest)?;
        let packed = match manifest.call(&mut self.store, ()) {
            Ok(v) => v,
            Err(e) => return Err(classify(&mut self.store, &e)),
        };
        let (ptr, len) = ((packed >> 32) as u32, (packed & 0xffff_ffff) as usize);
        if len > crate::manifest::MAX_MANIFEST_BYTES {
            return Err(Fault::Manifest);
        }
        let bytes = self.read(ptr, len).map_err(|_| Fault::Manifest)?;
        Manifest::parse(&bytes)
    }

    /// Fresh budget and a reset guest heap for the next call.
    fn begin(&mut self, limits: &CallLimits, rows: usize) -> std::result::Result<(), Fault> {
        set_budget(&mut self.store, limits, rows)?;
        self.reset
            .call(&mut self.store, ())
            .map_err(|e| classify(&mut self.store, &e))
    }

    fn alloc(&mut self, len: usize) -> std::result::Result<u32, Fault> {
        let n = u32::try_from(len).map_err(|_| Fault::Memory)?;
        let p = self
            .alloc
            .call(&mut self.store, n)
            .map_err(|e| classify(&mut self.store, &e))?;
        let end = (p as usize).checked_add(len).ok_or(Fault::Output)?;
        if p == 0 || p % 8 != 0 || end > self.memory.data_size(&self.store) {
            // The guest's allocator returned nothing usable: treat as its
            // memory running out.
            return Err(Fault::Memory);
        }
        Ok(p)
    }

    fn write(&mut self, base: u32, image: &CallImage<'_>) -> std::result::Result<(), Fault> {
        let mem = self.memory.data_mut(&mut self.store);
        let dst = mem
            .get_mut(base as usize..base as usize + image.len)
            .ok_or(Fault::Memory)?;
        image.write(dst, base)
    }

    /// Copy `bytes` into a fresh guest allocation; returns its address.
    fn stage(&mut self, bytes: &[u8]) -> std::result::Result<u32, Fault> {
        let at = self.alloc(bytes.len())?;
        self.memory
            .write(&mut self.store, at as usize, bytes)
            .map_err(|_| Fault::Memory)?;
        Ok(at)
    }

    fn read(&self, at: u32, len: usize) -> std::result::Result<Vec<u8>, Fault> {
        let mut out = vec![0u8; len];
        self.memory
            .read(&self.store, at as usize, &mut out)
            .map_err(|_| Fault::Output)?;
        Ok(out)
    }

    fn call(&mut self, export: &str, args: &[u32]) -> std::result::Result<(), Fault> {
        let func = match self.funcs.get(export) {
            Some(f) => *f,
            None => {
                let index = self.abi.functions.get(export).ok_or(Fault::Signature)?;
                let f = self
                    .instance
                    .get_module_export(&mut self.store, index)
                    .and_then(|e| e.into_func())
                    .ok_or(Fault::Signature)?;
                self.funcs.insert(export.to_string(), f);
                f
            }
        };
        let status = match args {
            [a] => func
                .typed::<u32, i32>(&self.store)
                .map_err(|_| Fault::Signature)?
                .call(&mut self.store, *a),
            [a, b] => func
                .typed::<(u32, u32), i32>(&self.store)
                .map_err(|_| Fault::Signature)?
                .call(&mut self.store, (*a, *b)),
            _ => return Err(Fault::Signature),
        }
        .map_err(|e| classify(&mut self.store, &e))?;
        // A non-zero status is the guest saying it could not compute.
        if status != 0 {
            return Err(Fault::Trap);
        }
        Ok(())
    }

    fn output(
        &self,
        desc: u32,
        rows: usize,
        returns: Type,
        domain: Option<&DomainCheck>,
        limits: &CallLimits,
    ) -> std::result::Result<ArrayRef, Fault> {
        abi::read_output(
            self.memory.data(&self.store),
            desc,
            rows,
            returns,
            domain,
            limits.output_bytes,
        )
    }
}

fn set_budget(
    store: &mut Store<HostState>,
    limits: &CallLimits,
    rows: usize,
) -> std::result::Result<(), Fault> {
    let fuel = limits
        .fuel_per_call
        .saturating_add(limits.fuel_per_row.saturating_mul(rows as u64));
    store.set_fuel(fuel).map_err(|_| Fault::Busy)?;
    let ticks = (limits.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.data_mut().fired = None;
    Ok(())
}

/// Which limit or trap ended a call.
fn classify(store: &mut Store<HostState>, e: &wasmtime::Error) -> Fault {
    if let Some(f) = store.data_mut().fired.take() {
        return f;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel | Trap::Interrupt) => Fault::Fuel,
        Some(Trap::StackOverflow) => Fault::Stack,
        _ => Fault::Trap,
    }
}
