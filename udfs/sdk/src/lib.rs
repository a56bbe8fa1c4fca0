//! `kexin-guest`: the guest side of kexin's batch ABI (see `sandbox/ABI.md`).
//!
//! A UDF crate declares its functions once with [`export_abi!`] (the manifest
//! JSON) and writes each function as a plain Rust closure over a [`Row`]:
//!
//! ```ignore
//! kexin_guest::export_abi!(r#"{"abi":1,"functions":[
//!   {"name":"bmi","kind":"scalar","args":["f64","f64"],"returns":"f64"}]}"#);
//!
//! #[no_mangle]
//! pub extern "C" fn kx_bmi(call: u32) -> i32 {
//!     kexin_guest::map_f64(call, |r| my_bmi(r.f64(0)?, r.f64(1)?))
//! }
//! ```
//!
//! Nulls propagate through `?`: a row whose inputs are null (or whose
//! function returns `None`) comes out null. The SDK builds with Rust 1.63
//! (Debian's `rustc`) as well as current toolchains, so it avoids newer
//! language features, and with `no_std`, so it brings its own [`math`].
#![no_std]

pub mod math;

/// The ABI version this SDK speaks.
pub const ABI_VERSION: u32 = 1;

/// Type codes (ABI.md, "Type codes").
pub mod ty {
    pub const I32: u32 = 1;
    pub const I64: u32 = 2;
    pub const F64: u32 = 3;
    pub const BOOL: u32 = 4;
    pub const UTF8: u32 = 5;
    pub const DATE: u32 = 6;
}

// Allowed: the ABI exports are called by the wasm host only.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const HEADER: usize = 16;
// Allowed: the ABI exports are called by the wasm host only.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const SLOT: usize = 20;

#[cfg(target_arch = "wasm32")]
mod heap {
    use core::sync::atomic::{AtomicUsize, Ordering};

    const PAGE: usize = 65536;
    static START: AtomicUsize = AtomicUsize::new(0);
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static END: AtomicUsize = AtomicUsize::new(0);

    extern "C" {
        /// Set by the linker: the first byte after the module's static data
        /// and shadow stack.
        static __heap_base: u8;
    }

    /// Bump allocation above everything the module's own data and stack use:
    /// the heap starts at `__heap_base`, uses the rest of the initial memory
    /// and then grows it by whole pages. 0 means out of memory.
    pub fn alloc(size: usize) -> usize {
        if START.load(Ordering::Relaxed) == 0 {
            // Safety: only the symbol's address is taken, never its value.
            let base = unsafe { &__heap_base as *const u8 as usize };
            let base = (base + 7) & !7;
            START.store(base, Ordering::Relaxed);
            NEXT.store(base, Ordering::Relaxed);
            END.store(core::arch::wasm32::memory_size(0) * PAGE, Ordering::Relaxed);
        }
        let p = (NEXT.load(Ordering::Relaxed) + 7) & !7;
        let new = match p.checked_add(size) {
            Some(n) => n,
            None => return 0,
        };
        let end = END.load(Ordering::Relaxed);
        if new > end {
            let pages = (new - end + PAGE - 1) / PAGE;
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return 0;
            }
            END.store(end + pages * PAGE, Ordering::Relaxed);
        }
        NEXT.store(new, Ordering::Relaxed);
        p
    }

    /// Extend the most recent allocation, which ends at `end`, by `extra`
    /// bytes in place. False if it is not the most recent one or memory is
    /// exhausted.
    pub fn extend(end: usize, extra: usize) -> bool {
        if NEXT.load(Ordering::Relaxed) != end {
            return false;
        }
        let new = match end.checked_add(extra) {
            Some(n) => n,
            None => return false,
        };
        let top = END.load(Ordering::Relaxed);
        if new > top {
            let pages = (new - top + PAGE - 1) / PAGE;
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return false;
            }
            END.store(top + pages * PAGE, Ordering::Relaxed);
        }
        NEXT.store(new, Ordering::Relaxed);
        true
    }

    /// Forget every allocation (the host calls this before each call).
    pub fn reset() {
        let s = START.load(Ordering::Relaxed);
        NEXT.store(s, Ordering::Relaxed);
    }
}

/// Allocate `size` bytes of guest memory, 8-byte aligned; 0 when out of
/// memory. Exported as `kexin_alloc` by [`export_abi!`].
#[cfg(target_arch = "wasm32")]
pub fn alloc(size: u32) -> u32 {
    heap::alloc(size as usize) as u32
}

/// Drop all allocations. Exported as `kexin_reset` by [`export_abi!`].
#[cfg(target_arch = "wasm32")]
pub fn reset() {
    heap::reset()
}

#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// Define the module-level exports: `kexin_manifest`, `kexin_alloc`,
/// `kexin_reset`. Takes the manifest JSON as a string literal.
#[macro_export]
macro_rules! export_abi {
    ($manifest:expr) => {
        /// The manifest JSON, for native tests.
        pub const MANIFEST: &str = $manifest;

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn kexin_manifest() -> u64 {
            let s: &'static str = MANIFEST;
            ((s.as_ptr() as u64) << 32) | s.len() as u64
        }

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn kexin_alloc(size: u32) -> u32 {
            $crate::alloc(size)
        }

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn kexin_reset() {
            $crate::reset()
        }
    };
}

/// Raw access to guest memory at host-provided addresses. The host lays out
/// every buffer it passes (ABI.md); these helpers are the only place the SDK
/// turns addresses into slices.
#[cfg(target_arch = "wasm32")]
mod raw {
    pub fn u32_at(addr: usize) -> u32 {
        // Safety: the host wrote the descriptor at this 8-aligned address.
        unsafe { core::ptr::read_unaligned(addr as *const u32) }
    }
    pub fn put_u32(addr: usize, v: u32) {
        // Safety: the address is inside a descriptor the host allocated.
        unsafe { core::ptr::write_unaligned(addr as *mut u32, v) }
    }
    /// A host-written f64 column: 8-byte aligned by the ABI.
    pub fn f64s<'a>(addr: usize, rows: usize) -> Option<&'a [f64]> {
        if addr % 8 != 0 {
            return None;
        }
        if rows == 0 {
            return Some(&[]);
        }
        // Safety: the host wrote `rows` f64 values at this aligned address.
        Some(unsafe { core::slice::from_raw_parts(addr as *const f64, rows) })
    }
    // Allowed: the host hands the guest a fresh output buffer per call, and
    // no other reference to it exists. (The wasm build's rustc predates
    // `reason = ...` in lint attributes, so reasons here are comments.)
    #[allow(clippy::mut_from_ref)]
    pub fn f64s_mut<'a>(addr: usize, rows: usize) -> &'a mut [f64] {
        if rows == 0 {
            return &mut [];
        }
        // Safety: freshly allocated (8-aligned) from our own heap.
        unsafe { core::slice::from_raw_parts_mut(addr as *mut f64, rows) }
    }
    pub fn bytes<'a>(addr: usize, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        // Safety: host-written buffer of `len` bytes.
        unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
    }
    // Allowed: the host hands the guest a fresh output buffer per call, and
    // no other reference to it exists. (The wasm build's rustc predates
    // `reason = ...` in lint attributes, so reasons here are comments.)
    #[allow(clippy::mut_from_ref)]
    pub fn bytes_mut<'a>(addr: usize, len: usize) -> &'a mut [u8] {
        if len == 0 {
            return &mut [];
        }
        // Safety: freshly allocated from our own heap.
        unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
    }
}

/// One argument column of a call.
#[derive(Clone, Copy)]
struct Col<'a> {
    ty: u32,
    validity: Option<&'a [u8]>,
    values: &'a [u8],
    offsets: &'a [u8],
}

impl<'a> Col<'a> {
    fn valid(&self, i: usize) -> bool {
        match self.validity {
            None => true,
            Some(bits) => bits.get(i / 8).map_or(false, |b| b & (1 << (i % 8)) != 0),
        }
    }
    fn word4(&self, i: usize) -> Option<[u8; 4]> {
        let b = self.values.get(i * 4..i * 4 + 4)?;
        Some([b[0], b[1], b[2], b[3]])
    }
    fn word8(&self, i: usize) -> Option<[u8; 8]> {
        let b = self.values.get(i * 8..i * 8 + 8)?;
        Some([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    fn offset(&self, i: usize) -> Option<usize> {
        let b = self.offsets.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// Up to 8 columns: the manifest limit.
const MAX_ARGS: usize = 8;

/// A call's input batch.
pub struct Call<'a> {
    // Allowed: the ABI exports are called by the wasm host only.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    addr: usize,
    rows: usize,
    cols: [Option<Col<'a>>; MAX_ARGS],
}

/// One row of a call's input: typed accessors return `None` for nulls.
pub struct Row<'c, 'a> {
    call: &'c Call<'a>,
    i: usize,
}

impl<'c, 'a> Row<'c, 'a> {
    fn col(&self, arg: usize, ty: u32) -> Option<&'c Col<'a>> {
        let c = self.call.cols.get(arg)?.as_ref()?;
        if c.ty == ty && c.valid(self.i) {
            Some(c)
        } else {
            None
        }
    }
    pub fn f64(&self, arg: usize) -> Option<f64> {
        self.col(arg, ty::F64)?
            .word8(self.i)
            .map(f64::from_le_bytes)
    }
    pub fn i64(&self, arg: usize) -> Option<i64> {
        self.col(arg, ty::I64)?
            .word8(self.i)
            .map(i64::from_le_bytes)
    }
    pub fn i32(&self, arg: usize) -> Option<i32> {
        self.col(arg, ty::I32)?
            .word4(self.i)
            .map(i32::from_le_bytes)
    }
    /// Days since 1970-01-01.
    pub fn date(&self, arg: usize) -> Option<i32> {
        self.col(arg, ty::DATE)?
            .word4(self.i)
            .map(i32::from_le_bytes)
    }
    pub fn bool(&self, arg: usize) -> Option<bool> {
        self.col(arg, ty::BOOL)?.values.get(self.i).map(|b| *b != 0)
    }
    pub fn str(&self, arg: usize) -> Option<&'a str> {
        let c = self.col(arg, ty::UTF8)?;
        let (s, e) = (c.offset(self.i)?, c.offset(self.i + 1)?);
        let bytes = c.values.get(s..e)?;
        // The host passes Arrow Utf8 columns, which it has validated as
        // UTF-8; re-checking every row would double the cost of string UDFs.
        Some(unsafe { core::str::from_utf8_unchecked(bytes) })
    }
}

impl<'a> Call<'a> {
    /// Read the descriptor at `call`. `None` if the version is not ours.
    #[cfg(target_arch = "wasm32")]
    pub fn open(call: u32) -> Option<Call<'a>> {
        let addr = call as usize;
        if raw::u32_at(addr) != ABI_VERSION {
            return None;
        }
        let rows = raw::u32_at(addr + 4) as usize;
        let argc = raw::u32_at(addr + 8) as usize;
        if argc > MAX_ARGS {
            return None;
        }
        let mut cols = [None; MAX_ARGS];
        for (i, slot) in cols.iter_mut().enumerate().take(argc) {
            let s = addr + HEADER + SLOT * (1 + i);
            let ty = raw::u32_at(s);
            let validity = raw::u32_at(s + 4) as usize;
            let values = raw::u32_at(s + 8) as usize;
            let offsets = raw::u32_at(s + 12) as usize;
            let len = raw::u32_at(s + 16) as usize;
            *slot = Some(Col {
                ty,
                validity: if validity == 0 {
                    None
                } else {
                    Some(raw::bytes(validity, (rows + 7) / 8))
                },
                values: raw::bytes(values, len),
                offsets: if ty == ty::UTF8 {
                    raw::bytes(offsets, (rows + 1) * 4)
                } else {
                    &[]
                },
            });
        }
        Some(Call { addr, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn row(&self, i: usize) -> Row<'_, 'a> {
        Row { call: self, i }
    }

    /// Write the output slot.
    #[cfg(target_arch = "wasm32")]
    fn set_output(&self, ty: u32, validity: usize, values: usize, offsets: usize, len: usize) {
        let s = self.addr + HEADER;
        raw::put_u32(s, ty);
        raw::put_u32(s + 4, validity as u32);
        raw::put_u32(s + 8, values as u32);
        raw::put_u32(s + 12, offsets as u32);
        raw::put_u32(s + 16, len as u32);
    }
}

/// Status codes a function returns to the host.
pub const OK: i32 = 0;
/// The guest could not compute (bad descriptor, out of memory).
pub const FAILED: i32 = 1;

/// A fixed-width output column under construction.
#[cfg(target_arch = "wasm32")]
struct FixedOut {
    validity: usize,
    values: usize,
    bits: &'static mut [u8],
    vals: &'static mut [u8],
    width: usize,
    rows: usize,
    any_null: bool,
}

#[cfg(target_arch = "wasm32")]
impl FixedOut {
    fn new(rows: usize, width: usize) -> Option<FixedOut> {
        let validity = heap::alloc((rows + 7) / 8);
        let values = heap::alloc(rows * width);
        if validity == 0 || values == 0 {
            return None;
        }
        let bits = raw::bytes_mut(validity, (rows + 7) / 8);
        bits.fill(0xff);
        Some(FixedOut {
            validity,
            values,
            bits,
            vals: raw::bytes_mut(values, rows * width),
            width,
            rows,
            any_null: false,
        })
    }
    #[inline]
    fn put(&mut self, i: usize, v: Option<&[u8]>) {
        let w = self.width;
        let slot = &mut self.vals[i * w..(i + 1) * w];
        match v {
            Some(b) => slot.copy_from_slice(b),
            None => {
                slot.fill(0);
                self.bits[i / 8] &= !(1 << (i % 8));
                self.any_null = true;
            }
        }
    }
    fn finish(self, call: &Call<'_>, ty: u32) -> i32 {
        let validity = if self.any_null { self.validity } else { 0 };
        call.set_output(ty, validity, self.values, 0, self.rows * self.width);
        OK
    }
}

macro_rules! map_fixed {
    ($(#[$doc:meta])* $name:ident, $t:ty, $code:expr, $width:expr) => {
        $(#[$doc])*
        #[cfg(target_arch = "wasm32")]
        pub fn $name<F: Fn(&Row<'_, '_>) -> Option<$t>>(call: u32, f: F) -> i32 {
            let c = match Call::open(call) {
                Some(c) => c,
                None => return FAILED,
            };
            let mut out = match FixedOut::new(c.rows, $width) {
                Some(o) => o,
                None => return FAILED,
            };
            for i in 0..c.rows {
                let v = f(&c.row(i)).map(|x| x.to_le_bytes());
                out.put(i, v.as_ref().map(|b| &b[..]));
            }
            out.finish(&c, $code)
        }
    };
}

map_fixed!(
    /// Map each row to an `f64` (null for `None`).
    map_f64, f64, ty::F64, 8
);
map_fixed!(
    /// Map each row to an `i32` (null for `None`).
    map_i32, i32, ty::I32, 4
);
map_fixed!(
    /// Map each row to an `i64` (null for `None`).
    map_i64, i64, ty::I64, 8
);

/// The f64 argument `arg` of a call as a slice, if it has that type.
#[cfg(target_arch = "wasm32")]
fn f64_column<'a>(c: &Call<'a>, arg: usize) -> Option<(&'a [f64], Option<&'a [u8]>)> {
    let col = c.cols.get(arg)?.as_ref()?;
    if col.ty != ty::F64 || col.values.len() != c.rows * 8 {
        return None;
    }
    Some((
        raw::f64s(col.values.as_ptr() as usize, c.rows)?,
        col.validity,
    ))
}

#[cfg(target_arch = "wasm32")]
fn bit(bits: Option<&[u8]>, i: usize) -> bool {
    match bits {
        None => true,
        Some(b) => b.get(i / 8).map_or(false, |x| x & (1 << (i % 8)) != 0),
    }
}

/// Columnar fast path for `f(x) -> Option<f64>` over one f64 argument: the
/// input is read as a slice, not row by row.
#[cfg(target_arch = "wasm32")]
pub fn map1_f64<F: Fn(f64) -> Option<f64>>(call: u32, f: F) -> i32 {
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    let (x, xv) = match f64_column(&c, 0) {
        Some(v) => v,
        None => return FAILED,
    };
    finish_f64s(&c, |i| if bit(xv, i) { f(x[i]) } else { None })
}

/// Columnar fast path for `f(x, y) -> Option<f64>` over two f64 arguments.
#[cfg(target_arch = "wasm32")]
pub fn map2_f64<F: Fn(f64, f64) -> Option<f64>>(call: u32, f: F) -> i32 {
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    let ((x, xv), (y, yv)) = match (f64_column(&c, 0), f64_column(&c, 1)) {
        (Some(a), Some(b)) => (a, b),
        _ => return FAILED,
    };
    finish_f64s(&c, |i| {
        if bit(xv, i) && bit(yv, i) {
            f(x[i], y[i])
        } else {
            None
        }
    })
}

#[cfg(target_arch = "wasm32")]
fn finish_f64s<F: Fn(usize) -> Option<f64>>(c: &Call<'_>, value: F) -> i32 {
    let rows = c.rows;
    let validity = heap::alloc((rows + 7) / 8);
    let values = heap::alloc(rows * 8);
    if validity == 0 || values == 0 {
        return FAILED;
    }
    let out = raw::f64s_mut(values, rows);
    let bits = raw::bytes_mut(validity, (rows + 7) / 8);
    bits.fill(0xff);
    let mut any_null = false;
    for (i, o) in out.iter_mut().enumerate() {
        match value(i) {
            Some(v) => *o = v,
            None => {
                *o = 0.0;
                bits[i / 8] &= !(1 << (i % 8));
                any_null = true;
            }
        }
    }
    c.set_output(
        ty::F64,
        if any_null { validity } else { 0 },
        values,
        0,
        rows * 8,
    );
    OK
}

/// Map each row to a `bool` (null for `None`).
#[cfg(target_arch = "wasm32")]
pub fn map_bool<F: Fn(&Row<'_, '_>) -> Option<bool>>(call: u32, f: F) -> i32 {
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    let mut out = match FixedOut::new(c.rows, 1) {
        Some(o) => o,
        None => return FAILED,
    };
    for i in 0..c.rows {
        let v = f(&c.row(i)).map(|b| [u8::from(b)]);
        out.put(i, v.as_ref().map(|b| &b[..]));
    }
    out.finish(&c, ty::BOOL)
}

/// Map each row to a string (null for `None`). Strings are copied into one
/// output buffer that grows in place as needed.
#[cfg(target_arch = "wasm32")]
pub fn map_utf8<'s, F: Fn(&Row<'_, '_>) -> Option<&'s str>>(call: u32, f: F) -> i32 {
    const CHUNK: usize = 64 << 10;
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    let rows = c.rows;
    let validity = heap::alloc((rows + 7) / 8);
    let offsets = heap::alloc((rows + 1) * 4);
    // The data buffer is allocated last so that it can grow in place.
    let data = heap::alloc(CHUNK);
    if validity == 0 || offsets == 0 || data == 0 {
        return FAILED;
    }
    let mut cap = CHUNK;
    let bits = raw::bytes_mut(validity, (rows + 7) / 8);
    bits.fill(0xff);
    let offs = raw::bytes_mut(offsets, (rows + 1) * 4);
    let mut any_null = false;
    let mut at = 0usize;
    offs[0..4].copy_from_slice(&0u32.to_le_bytes());
    for i in 0..rows {
        match f(&c.row(i)) {
            Some(s) => {
                let n = s.len();
                if at + n > cap {
                    let extra = if n > CHUNK { n } else { CHUNK };
                    if !heap::extend(data + cap, extra) {
                        return FAILED;
                    }
                    cap += extra;
                }
                raw::bytes_mut(data + at, n).copy_from_slice(s.as_bytes());
                at += n;
            }
            None => {
                bits[i / 8] &= !(1 << (i % 8));
                any_null = true;
            }
        }
        offs[(i + 1) * 4..(i + 2) * 4].copy_from_slice(&(at as u32).to_le_bytes());
    }
    c.set_output(
        ty::UTF8,
        if any_null { validity } else { 0 },
        data,
        offsets,
        at,
    );
    OK
}

/// Visit every row of an aggregate's update batch.
#[cfg(target_arch = "wasm32")]
pub fn for_each_row<F: FnMut(&Row<'_, '_>)>(call: u32, mut f: F) -> i32 {
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    for i in 0..c.rows {
        f(&c.row(i));
    }
    OK
}

/// An aggregate's state as `N` f64 words, read from and written back to the
/// host-provided state buffer.
#[cfg(target_arch = "wasm32")]
pub fn with_state<const N: usize, R, F: FnOnce(&mut [f64; N]) -> R>(state: u32, f: F) -> R {
    let bytes = raw::bytes_mut(state as usize, N * 8);
    let mut words = [0f64; N];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
    let r = f(&mut words);
    for (w, b) in words.iter().zip(bytes.chunks_exact_mut(8)) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    r
}

/// Write a one-row f64 result for an aggregate's finalize call.
#[cfg(target_arch = "wasm32")]
pub fn finish_f64(call: u32, v: Option<f64>) -> i32 {
    let c = match Call::open(call) {
        Some(c) => c,
        None => return FAILED,
    };
    let mut out = match FixedOut::new(1, 8) {
        Some(o) => o,
        None => return FAILED,
    };
    out.put(0, v.map(|x| x.to_le_bytes()).as_ref().map(|b| &b[..]));
    out.finish(&c, ty::F64)
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// algorithm). Returns (year, month, day).
pub fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = i64::from(z) + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Completed years between two dates (days since 1970-01-01); `None` if
/// `at` is before `birth`.
pub fn age_years(birth: i32, at: i32) -> Option<i32> {
    if at < birth {
        return None;
    }
    let (by, bm, bd) = civil_from_days(birth);
    let (ay, am, ad) = civil_from_days(at);
    let mut age = ay - by;
    if (am, ad) < (bm, bd) {
        age -= 1;
    }
    Some(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn ages() {
        // 2000-02-29 to 2026-02-28: 25 completed years; to 2026-03-01: 26.
        assert_eq!(age_years(11_016, 20_512), Some(25));
        assert_eq!(age_years(11_016, 20_513), Some(26));
        assert_eq!(age_years(100, 99), None);
    }
}
