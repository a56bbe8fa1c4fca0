//! The batch ABI: how Arrow columns are laid out in guest memory and how the
//! guest's output is read back (ABI.md is the normative description).
//!
//! Everything the guest writes is untrusted: every pointer and length is
//! bounds-checked against the memory, offsets must be monotonic, strings
//! UTF-8, booleans 0 or 1, and values inside the declared domain.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::DataType;

use crate::error::Fault;
use crate::manifest::{DomainCheck, Type};

/// The ABI version a manifest must declare.
pub const ABI_VERSION: u32 = 1;
/// Call descriptor header: version, rows, argc, reserved.
pub const HEADER_BYTES: usize = 16;
/// One column slot: type, validity ptr, values ptr, offsets ptr, values len.
pub const SLOT_BYTES: usize = 20;

/// The Arrow type the host uses for an ABI type.
pub fn arrow_type(t: Type) -> DataType {
    match t {
        Type::I32 => DataType::Int32,
        Type::I64 => DataType::Int64,
        Type::F64 => DataType::Float64,
        Type::Bool => DataType::Boolean,
        Type::Utf8 => DataType::Utf8,
        Type::Date => DataType::Date32,
    }
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// One column's buffers, ready to copy.
struct Part<'a> {
    ty: Type,
    validity: Option<Cow<'a, [u8]>>,
    values: Cow<'a, [u8]>,
    offsets: Option<Cow<'a, [u8]>>,
}

/// A batch laid out for one call: descriptor first, then each column's
/// validity, values and offsets, each 8-byte aligned.
pub struct CallImage<'a> {
    rows: usize,
    parts: Vec<Part<'a>>,
    /// Total bytes, descriptor included.
    pub len: usize,
}

impl std::fmt::Debug for CallImage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallImage")
            .field("rows", &self.rows)
            .field("columns", &self.parts.len())
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> CallImage<'a> {
    /// Lay out `args` (already of the declared types) for a call over `rows`.
    pub fn new(types: &[Type], args: &'a [ArrayRef], rows: usize) -> Result<Self, Fault> {
        if types.len() != args.len() || u32::try_from(rows).is_err() {
            return Err(Fault::Signature);
        }
        let mut parts = Vec::with_capacity(args.len());
        let mut len = align8(HEADER_BYTES + SLOT_BYTES * (1 + args.len()));
        for (ty, a) in types.iter().zip(args) {
            if a.len() != rows || a.data_type() != &arrow_type(*ty) {
                return Err(Fault::Signature);
            }
            let validity: Option<Cow<'a, [u8]>> = a
                .nulls()
                .filter(|n| n.null_count() > 0)
                .map(|n| Cow::Owned(n.inner().sliced().as_slice().to_vec()));
            let (values, offsets): (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>) = match ty {
                Type::I32 => (
                    Cow::Borrowed(a.as_primitive::<Int32Type>().values().inner().as_slice()),
                    None,
                ),
                Type::Date => (
                    Cow::Borrowed(a.as_primitive::<Date32Type>().values().inner().as_slice()),
                    None,
                ),
                Type::I64 => (
                    Cow::Borrowed(a.as_primitive::<Int64Type>().values().inner().as_slice()),
                    None,
                ),
                Type::F64 => (
                    Cow::Borrowed(a.as_primitive::<Float64Type>().values().inner().as_slice()),
                    None,
                ),
                Type::Bool => (
                    Cow::Owned(a.as_boolean().values().iter().map(u8::from).collect()),
                    None,
                ),
                Type::Utf8 => {
                    let s = a.as_string::<i32>();
                    let offs = s.value_offsets();
                    let first = offs.first().copied().unwrap_or(0);
                    let last = offs.last().copied().unwrap_or(0);
                    let data = s
                        .values()
                        .as_slice()
                        .get(first as usize..last as usize)
                        .ok_or(Fault::Signature)?;
                    // Unsliced arrays (the usual case) already start at 0:
                    // their offsets are passed as they are.
                    let offsets = if first == 0 {
                        Cow::Borrowed(s.offsets().inner().inner().as_slice())
                    } else {
                        Cow::Owned(
                            offs.iter()
                                .flat_map(|o| ((o - first) as u32).to_le_bytes())
                                .collect(),
                        )
                    };
                    (Cow::Borrowed(data), Some(offsets))
                }
            };
            len += validity.as_ref().map_or(0, |v| align8(v.len()));
            len += align8(values.len());
            len += offsets.as_ref().map_or(0, |o| align8(o.len()));
            parts.push(Part {
                ty: *ty,
                validity,
                values,
                offsets,
            });
        }
        Ok(CallImage { rows, parts, len })
    }

    /// A descriptor with no arguments (aggregate finalize: one output row).
    pub fn empty(rows: usize) -> Self {
        CallImage {
            rows,
            parts: vec![],
            len: align8(HEADER_BYTES + SLOT_BYTES),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Copy into `dst` (exactly `self.len` bytes of guest memory starting at
    /// guest address `base`).
    pub fn write(&self, dst: &mut [u8], base: u32) -> Result<(), Fault> {
        if dst.len() != self.len {
            return Err(Fault::Trap);
        }
        // Only the descriptor needs zeroing (the guest reads unset slot
        // fields as 0); every buffer byte after it is overwritten below.
        let desc = align8(HEADER_BYTES + SLOT_BYTES * (1 + self.parts.len()));
        dst[..desc].fill(0);
        let addr = |off: usize| -> Result<u32, Fault> {
            u32::try_from(off)
                .ok()
                .and_then(|o| base.checked_add(o))
                .ok_or(Fault::Memory)
        };
        put(dst, 0, ABI_VERSION);
        put(dst, 4, self.rows as u32);
        put(dst, 8, self.parts.len() as u32);
        let mut cursor = align8(HEADER_BYTES + SLOT_BYTES * (1 + self.parts.len()));
        for (i, p) in self.parts.iter().enumerate() {
            let slot = HEADER_BYTES + SLOT_BYTES * (1 + i);
            put(dst, slot, p.ty.code());
            if let Some(v) = &p.validity {
                dst[cursor..cursor + v.len()].copy_from_slice(v);
                put(dst, slot + 4, addr(cursor)?);
                cursor += align8(v.len());
            }
            dst[cursor..cursor + p.values.len()].copy_from_slice(&p.values);
            put(dst, slot + 8, addr(cursor)?);
            put(dst, slot + 16, p.values.len() as u32);
            cursor += align8(p.values.len());
            if let Some(o) = &p.offsets {
                dst[cursor..cursor + o.len()].copy_from_slice(o);
                put(dst, slot + 12, addr(cursor)?);
                cursor += align8(o.len());
            }
        }
        Ok(())
    }
}

fn put(dst: &mut [u8], at: usize, v: u32) {
    dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get(mem: &[u8], at: usize) -> Result<u32, Fault> {
    let b = mem
        .get(at..at.checked_add(4).ok_or(Fault::Output)?)
        .ok_or(Fault::Output)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The guest memory range `[ptr, ptr + len)`, or an output fault.
fn span(mem: &[u8], ptr: u32, len: usize) -> Result<&[u8], Fault> {
    let start = ptr as usize;
    let end = start.checked_add(len).ok_or(Fault::Output)?;
    mem.get(start..end).ok_or(Fault::Output)
}

/// Read and validate the output slot of the descriptor at `desc`.
pub(crate) fn read_output(
    mem: &[u8],
    desc: u32,
    rows: usize,
    returns: Type,
    domain: Option<&DomainCheck>,
    max_bytes: usize,
) -> Result<ArrayRef, Fault> {
    let slot = (desc as usize)
        .checked_add(HEADER_BYTES)
        .ok_or(Fault::Output)?;
    let ty = get(mem, slot)?;
    let validity_ptr = get(mem, slot + 4)?;
    let values_ptr = get(mem, slot + 8)?;
    let offsets_ptr = get(mem, slot + 12)?;
    let values_len = get(mem, slot + 16)? as usize;
    if ty != returns.code() || values_len > max_bytes {
        return Err(Fault::Output);
    }
    let nulls = if validity_ptr == 0 {
        None
    } else {
        let bits = span(mem, validity_ptr, rows.div_ceil(8))?;
        Some(NullBuffer::new(BooleanBuffer::new(
            Buffer::from_slice_ref(bits),
            0,
            rows,
        )))
    };
    let out: ArrayRef = match returns.width() {
        Some(w) => {
            if values_len != rows.checked_mul(w).ok_or(Fault::Output)? {
                return Err(Fault::Output);
            }
            let bytes = span(mem, values_ptr, values_len)?;
            match returns {
                Type::Bool => {
                    if bytes.iter().any(|b| *b > 1) {
                        return Err(Fault::Output);
                    }
                    let values: BooleanBuffer = bytes.iter().map(|b| *b == 1).collect();
                    Arc::new(BooleanArray::new(values, nulls))
                }
                _ => {
                    let buf = Buffer::from_slice_ref(bytes);
                    match returns {
                        Type::I32 => {
                            Arc::new(Int32Array::new(ScalarBuffer::new(buf, 0, rows), nulls))
                        }
                        Type::Date => {
                            Arc::new(Date32Array::new(ScalarBuffer::new(buf, 0, rows), nulls))
                        }
                        Type::I64 => {
                            Arc::new(Int64Array::new(ScalarBuffer::new(buf, 0, rows), nulls))
                        }
                        _ => Arc::new(Float64Array::new(ScalarBuffer::new(buf, 0, rows), nulls)),
                    }
                }
            }
        }
        None => {
            let raw = span(mem, offsets_ptr, (rows + 1) * 4)?;
            let mut offsets = Vec::with_capacity(rows + 1);
            let mut prev = 0i32;
            for (i, c) in raw.chunks_exact(4).enumerate() {
                let o = i32::try_from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .map_err(|_| Fault::Output)?;
                if (i == 0 && o != 0) || o < prev || o as usize > values_len {
                    return Err(Fault::Output);
                }
                prev = o;
                offsets.push(o);
            }
            if values_len
                .checked_add(raw.len())
                .is_none_or(|t| t > max_bytes)
            {
                return Err(Fault::Output);
            }
            let data = span(mem, values_ptr, prev as usize)?;
            let arr = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_slice_ref(data),
                nulls,
            )
            .map_err(|_| Fault::Output)?;
            Arc::new(arr)
        }
    };
    if let Some(d) = domain {
        check_domain(&out, d)?;
    }
    Ok(out)
}

fn check_domain(a: &ArrayRef, d: &DomainCheck) -> Result<(), Fault> {
    let ok = match (d, a.data_type()) {
        (DomainCheck::Values(set), DataType::Utf8) => a
            .as_string::<i32>()
            .iter()
            .all(|v| v.is_none_or(|s| set.contains(s))),
        (DomainCheck::Range(lo, hi), DataType::Int32) => a
            .as_primitive::<Int32Type>()
            .iter()
            .all(|v| v.is_none_or(|x| (*lo..=*hi).contains(&i64::from(x)))),
        (DomainCheck::Range(lo, hi), DataType::Int64) => a
            .as_primitive::<Int64Type>()
            .iter()
            .all(|v| v.is_none_or(|x| (*lo..=*hi).contains(&x))),
        _ => false,
    };
    if ok { Ok(()) } else { Err(Fault::Output) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write a call image, then let a fake "guest" point the output slot at
    /// the first argument's buffers: the host must read back the same column.
    fn roundtrip(ty: Type, a: ArrayRef) -> ArrayRef {
        let rows = a.len();
        let args = [a];
        let img = CallImage::new(&[ty], &args, rows).unwrap();
        let base = 64u32;
        let mut mem = vec![0u8; base as usize + img.len];
        img.write(&mut mem[base as usize..], base).unwrap();
        let arg_slot = base as usize + HEADER_BYTES + SLOT_BYTES;
        let out_slot = base as usize + HEADER_BYTES;
        let copy: Vec<u8> = mem[arg_slot..arg_slot + SLOT_BYTES].to_vec();
        mem[out_slot..out_slot + SLOT_BYTES].copy_from_slice(&copy);
        read_output(&mem, base, rows, ty, None, 1 << 20).unwrap()
    }

    #[test]
    fn columns_roundtrip_through_guest_layout() {
        let f: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)]));
        assert_eq!(&roundtrip(Type::F64, f.clone()), &f);
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("甲"),
            None,
            Some(""),
            Some("xyz"),
        ]));
        assert_eq!(&roundtrip(Type::Utf8, s.clone()), &s);
        // A sliced string column: offsets must be rebased to zero.
        let sliced = s.slice(1, 3);
        assert_eq!(&roundtrip(Type::Utf8, sliced.clone()), &sliced);
        let b: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), Some(false), None]));
        assert_eq!(&roundtrip(Type::Bool, b.clone()), &b);
        let d: ArrayRef = Arc::new(Date32Array::from(vec![Some(1), Some(20000)]));
        assert_eq!(&roundtrip(Type::Date, d.clone()), &d);
    }

    #[test]
    fn lying_outputs_are_rejected() {
        let mut mem = vec![0u8; 256];
        let slot = HEADER_BYTES;
        // Claims 4 rows of f64 but only 8 bytes.
        put(&mut mem, slot, Type::F64.code());
        put(&mut mem, slot + 8, 128);
        put(&mut mem, slot + 16, 8);
        assert_eq!(
            read_output(&mem, 0, 4, Type::F64, None, 1 << 20).unwrap_err(),
            Fault::Output
        );
        // Pointer past the end of memory.
        put(&mut mem, slot + 8, 250);
        put(&mut mem, slot + 16, 32);
        assert!(read_output(&mem, 0, 4, Type::F64, None, 1 << 20).is_err());
        // Wrong type code.
        put(&mut mem, slot, Type::I64.code());
        put(&mut mem, slot + 8, 128);
        assert!(read_output(&mem, 0, 4, Type::F64, None, 1 << 20).is_err());
        // Non-monotonic string offsets.
        put(&mut mem, slot, Type::Utf8.code());
        put(&mut mem, slot + 12, 200);
        put(&mut mem, slot + 16, 4);
        for (i, o) in [0u32, 3, 1].iter().enumerate() {
            put(&mut mem, 200 + 4 * i, *o);
        }
        assert!(read_output(&mem, 0, 2, Type::Utf8, None, 1 << 20).is_err());
        // Boolean bytes other than 0/1.
        put(&mut mem, slot, Type::Bool.code());
        put(&mut mem, slot + 8, 100);
        put(&mut mem, slot + 16, 2);
        mem[100] = 1;
        mem[101] = 7;
        assert!(read_output(&mem, 0, 2, Type::Bool, None, 1 << 20).is_err());
    }

    proptest::proptest! {
        /// Whatever a guest leaves in its memory and output slot, decoding
        /// returns a value or `Fault::Output`: it never panics, and what it
        /// returns has the declared type and row count.
        #[test]
        fn decoding_untrusted_output_never_panics(
            mem in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            slot in proptest::collection::vec(0u32..600, 5),
            ty in 0usize..6,
            rows in 0usize..40,
        ) {
            let types = [Type::I32, Type::I64, Type::F64, Type::Bool, Type::Utf8, Type::Date];
            let mut mem = mem;
            mem.resize(mem.len().max(HEADER_BYTES + SLOT_BYTES), 0);
            // Slot values drawn near the memory size, so that both in-bounds
            // and out-of-bounds pointers occur; the type code is right half
            // of the time.
            let want = types[ty];
            let code = if slot[0] % 2 == 0 { want.code() } else { slot[0] % 8 };
            put(&mut mem, HEADER_BYTES, code);
            for (i, v) in slot[1..].iter().enumerate() {
                put(&mut mem, HEADER_BYTES + 4 * (i + 1), *v);
            }
            let domain = DomainCheck::Range(0, 100);
            let d = matches!(want, Type::I32 | Type::I64).then_some(&domain);
            if let Ok(a) = read_output(&mem, 0, rows, want, d, 1 << 20) {
                proptest::prop_assert_eq!(a.len(), rows);
                proptest::prop_assert_eq!(a.data_type(), &arrow_type(want));
            }
        }
    }

    #[test]
    fn domain_is_enforced() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![Some(0), None, Some(7)]));
        assert!(check_domain(&a, &DomainCheck::Range(0, 6)).is_err());
        assert!(check_domain(&a, &DomainCheck::Range(0, 7)).is_ok());
    }
}
