//! FHE-gated release: the release gate evaluated on encrypted joint totals
//! (TFHE, tfhe-rs's integer API on the CPU).
//!
//! Three roles:
//! - the **key holder** generates the keys, publishes the compact public key
//!   and the server key, and decrypts only the aggregator's gated outputs;
//! - **contributors** (hospital nodes' partial totals) encrypt with the
//!   compact public key;
//! - the **aggregator** adds the encrypted contributions and computes, per
//!   cell, `flag = count >= k` and `released = flag ? total : 0` for every
//!   total of the cell. It never holds a decryption key.
//!
//! So neither the aggregator nor the key holder sees a suppressed cell's
//! count, and the key holder sees nothing but released totals and zeros.
//! The key holder must never decrypt a ciphertext that a researcher (or
//! anyone but the aggregator of the session) produced: decryption oracles
//! break TFHE. That is enforced by the caller, which accepts gated outputs
//! only from the aggregator's authenticated link in a session it joined.
//!
//! Everything that crosses a wire or a file goes through [`seal`]/[`unseal`]:
//! a kexin envelope (magic, version, kind) around tfhe's own versioned,
//! size-limited `safe_serialize`; ciphertexts and keys are checked for
//! conformance with the one parameter set in use ([`params`]) when read.

use std::io::Cursor;

use tfhe::conformance::ListSizeConstraint;
use tfhe::integer::prelude::*;
use tfhe::integer::{BooleanBlock, RadixCiphertext};
use tfhe::prelude::*;
use tfhe::safe_serialization::{safe_deserialize, safe_deserialize_conformant, safe_serialize};
use tfhe::shortint::parameters::{
    ClassicPBSParameters, CompactPublicKeyEncryptionParameters,
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128,
};
use tfhe::{
    ClientKey, CompactCiphertextList, CompactCiphertextListConformanceParams, CompactPublicKey,
    ConfigBuilder, FheUint2, FheUint2Id, FheUint32, FheUint32Id, FheUint64, FheUint64Id,
    ReRandomizationMetadata, ServerKey, Tag,
};

use crate::error::{Error, Result};

/// Version of the kexin envelope around tfhe's serialization.
pub const WIRE_VERSION: u8 = 1;

const MAGIC: &[u8; 4] = b"KXFH";

/// Size limits for everything read back (bytes). A server key or
/// ciphertext over its limit is rejected before it is decoded.
pub mod limit {
    /// The compact public key (about 33 KB with the parameters in use).
    pub const PUBLIC_KEY: u64 = 1 << 20;
    /// The server key (about 120 MB with the parameters in use).
    pub const SERVER_KEY: u64 = 256 << 20;
    /// The key holder's secret key file.
    pub const CLIENT_KEY: u64 = 1 << 20;
    /// One contributor's packed, compact-encrypted partial totals.
    pub const CONTRIBUTION: u64 = 8 << 20;
    /// The gated outputs the aggregator sends the key holder.
    pub const GATED: u64 = 40 << 20;
    /// Cells × totals one gated computation may hold (each costs about a
    /// second or more of TFHE on 2 cores).
    pub const MAX_VALUES: usize = 64;
}

/// What a sealed byte string holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    ClientKey = 1,
    PublicKey = 2,
    ServerKey = 3,
    Contribution = 4,
    Gated = 5,
}

/// The one parameter set: 2-bit message and carry blocks, keyswitch then
/// bootstrap, failure probability ≤ 2^-128 (tfhe's default).
pub fn params() -> ClassicPBSParameters {
    PARAM_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128
}

fn config() -> tfhe::Config {
    ConfigBuilder::with_custom_parameters(params()).build()
}

fn cpk_params() -> Result<CompactPublicKeyEncryptionParameters> {
    CompactPublicKeyEncryptionParameters::try_from(params())
        .map_err(|_| Error::Fhe("the parameter set has no compact public key"))
}

/// Seal a tfhe object: envelope header, then tfhe's versioned encoding
/// (limited to `limit` bytes).
fn seal<T>(kind: Kind, obj: &T, limit: u64) -> Result<Vec<u8>>
where
    T: serde::Serialize + tfhe::Versionize + tfhe::named::Named,
{
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    safe_serialize(obj, &mut out, limit).map_err(|_| Error::Fhe("serialization over its limit"))?;
    Ok(out)
}

/// Check the envelope and return the tfhe bytes.
fn unseal(kind: Kind, bytes: &[u8], limit: u64) -> Result<&[u8]> {
    if bytes.len() as u64 > limit + 6 {
        return Err(Error::Fhe("over the size limit"));
    }
    let Some((head, body)) = bytes.split_at_checked(6) else {
        return Err(Error::Malformed("truncated FHE envelope"));
    };
    if &head[..4] != MAGIC {
        return Err(Error::Malformed("not a kexin FHE envelope"));
    }
    if head[4] != WIRE_VERSION {
        return Err(Error::Malformed("unsupported FHE envelope version"));
    }
    if head[5] != kind as u8 {
        return Err(Error::Malformed("an FHE object of the wrong kind"));
    }
    Ok(body)
}

/// The cells and totals of one gated computation: `cells` cells of `stats`
/// totals each, in cell-major order. The total at `count_at` of each cell
/// is the gate's person count. Narrow totals (counts: the person count
/// always, others by [`Layout::narrow`]) are unsigned 32-bit, 16 blocks;
/// the others are signed 64-bit, 32 blocks. Every block costs one
/// bootstrap to expand, so narrow counts halve their share of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub cells: usize,
    pub stats: usize,
    pub count_at: usize,
    /// Bit `s` set: total `s` of every cell is a narrow count.
    narrow: u64,
}

impl Layout {
    pub fn new(cells: usize, stats: usize, count_at: usize) -> Result<Layout> {
        if stats == 0 || stats > 64 || count_at >= stats {
            return Err(Error::State("the count is not one of the totals"));
        }
        if cells == 0 || cells.saturating_mul(stats) > limit::MAX_VALUES {
            return Err(Error::Fhe("too many totals for one gated computation"));
        }
        Ok(Layout {
            cells,
            stats,
            count_at,
            narrow: 1 << count_at,
        })
    }

    /// Declare total `stat` of every cell a count (0 ≤ v < 2^32 / parties).
    pub fn narrow(mut self, stat: usize) -> Result<Layout> {
        if stat >= self.stats {
            return Err(Error::State("no such total"));
        }
        self.narrow |= 1 << stat;
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.cells * self.stats
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_narrow(&self, i: usize) -> bool {
        self.narrow >> (i % self.stats) & 1 == 1
    }

    /// Blocks of 2 bits in one contribution (for the list size check).
    fn blocks(&self) -> usize {
        let narrow = self.narrow.count_ones() as usize;
        self.cells * (16 * narrow + 32 * (self.stats - narrow))
    }
}

/// The public half the key holder publishes.
#[derive(Clone)]
pub struct PublicKeys {
    pub compact: CompactPublicKey,
    pub server: ServerKey,
}

impl std::fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKeys(..)")
    }
}

impl PublicKeys {
    pub fn compact_bytes(&self) -> Result<Vec<u8>> {
        seal(Kind::PublicKey, &self.compact, limit::PUBLIC_KEY)
    }

    pub fn server_bytes(&self) -> Result<Vec<u8>> {
        seal(Kind::ServerKey, &self.server, limit::SERVER_KEY)
    }
}

/// The key holder: the only party that can decrypt.
#[derive(Clone)]
pub struct KeyHolder {
    client: ClientKey,
}

impl std::fmt::Debug for KeyHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHolder(..)")
    }
}

/// One cell as the key holder opened it: `None` if its count missed the
/// threshold (every gated total was zero), else its totals.
pub type OpenedCell = Option<Vec<i128>>;

impl KeyHolder {
    /// Fresh keys (a few seconds: most of it is the server key).
    pub fn generate() -> Result<(KeyHolder, PublicKeys)> {
        let client = ClientKey::generate(config());
        let compact = CompactPublicKey::try_new(&client)
            .map_err(|_| Error::Fhe("no compact public key for these parameters"))?;
        let server = ServerKey::new(&client);
        Ok((KeyHolder { client }, PublicKeys { compact, server }))
    }

    /// The secret key, sealed (store it with owner-only permissions).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        seal(Kind::ClientKey, &self.client, limit::CLIENT_KEY)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<KeyHolder> {
        let body = unseal(Kind::ClientKey, bytes, limit::CLIENT_KEY)?;
        let client: ClientKey = safe_deserialize(Cursor::new(body), limit::CLIENT_KEY)
            .map_err(|_| Error::Malformed("not an FHE client key"))?;
        Ok(KeyHolder { client })
    }

    /// Decrypt the aggregator's gated outputs: per cell a released flag and
    /// the gated totals. A cell whose flag is off must decrypt to zeros
    /// only; anything else means the aggregator did not gate, and nothing is
    /// returned.
    pub fn open(&self, layout: &Layout, gated: &[u8]) -> Result<Vec<OpenedCell>> {
        let g = Gated::decode(layout, gated)?;
        let mut cells = Vec::with_capacity(layout.cells);
        for c in 0..layout.cells {
            let flag: u8 = g.flags[c].decrypt(&self.client);
            let totals: Vec<i128> = (0..layout.stats)
                .map(|s| g.values[c * layout.stats + s].decrypt(&self.client))
                .collect();
            match flag {
                1 => cells.push(Some(totals)),
                0 if totals.iter().all(|v| *v == 0) => cells.push(None),
                _ => return Err(Error::Fhe("the gated outputs were not gated")),
            }
        }
        Ok(cells)
    }
}

/// A contributor: encrypts its partial totals under the compact public key.
#[derive(Clone)]
pub struct Encryptor {
    pk: CompactPublicKey,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encryptor(..)")
    }
}

impl Encryptor {
    pub fn new(pk: CompactPublicKey) -> Encryptor {
        Encryptor { pk }
    }

    /// Read a sealed compact public key, checked against the parameters.
    pub fn from_bytes(bytes: &[u8]) -> Result<Encryptor> {
        let body = unseal(Kind::PublicKey, bytes, limit::PUBLIC_KEY)?;
        let pk: CompactPublicKey =
            safe_deserialize_conformant(Cursor::new(body), limit::PUBLIC_KEY, &cpk_params()?)
                .map_err(|_| Error::Malformed("not a conformant compact public key"))?;
        Ok(Encryptor { pk })
    }

    /// Encrypt one party's totals (layout order). With `parties` parties
    /// every count must stay under 2^32 / parties and every other total
    /// within ±2^63 / parties, so the encrypted sums cannot wrap.
    pub fn encrypt(&self, layout: &Layout, totals: &[i128], parties: usize) -> Result<Vec<u8>> {
        if totals.len() != layout.len() {
            return Err(Error::LengthMismatch);
        }
        let parties = parties.max(1) as i128;
        let mut b = CompactCiphertextList::builder(&self.pk);
        for (i, v) in totals.iter().enumerate() {
            if layout.is_narrow(i) {
                if *v < 0 || *v >= (1i128 << 32) / parties {
                    return Err(Error::OutOfRange);
                }
                b.push(*v as u32);
            } else {
                if v.abs() >= (1i128 << 63) / parties {
                    return Err(Error::OutOfRange);
                }
                b.push(*v as i64 as u64);
            }
        }
        let list = b.build_packed();
        seal(Kind::Contribution, &list, limit::CONTRIBUTION)
    }
}

/// The aggregator: holds the server key only.
#[derive(Clone)]
pub struct Aggregator {
    hl: ServerKey,
    int: tfhe::integer::ServerKey,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aggregator(..)")
    }
}

/// The aggregator's work on one computation, for the audit and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Additions without carry propagation.
    pub unchecked_adds: usize,
    /// Carry propagations forced because another unchecked add was unsafe.
    pub propagations: usize,
}

impl Aggregator {
    pub fn new(server: ServerKey) -> Aggregator {
        let int = server.clone().into_raw_parts().0;
        Aggregator { hl: server, int }
    }

    /// Read a sealed server key (at most `limit` bytes), checked against
    /// the parameters in use.
    pub fn from_bytes(bytes: &[u8], limit: u64) -> Result<Aggregator> {
        let body = unseal(Kind::ServerKey, bytes, limit)?;
        let server: ServerKey =
            safe_deserialize_conformant(Cursor::new(body), limit, &config().into())
                .map_err(|_| Error::Fhe("not a conformant server key, or over its size limit"))?;
        Ok(Aggregator::new(server))
    }

    /// Check and expand one contribution into its radix ciphertexts
    /// (layout order).
    fn expand(&self, layout: &Layout, bytes: &[u8]) -> Result<Vec<RadixCiphertext>> {
        let body = unseal(Kind::Contribution, bytes, limit::CONTRIBUTION)?;
        let sizes = ListSizeConstraint::try_size_in_range(1, layout.blocks())
            .map_err(|_| Error::State("list size"))?;
        let conf = CompactCiphertextListConformanceParams::from_parameters_and_size_constraint(
            cpk_params()?,
            sizes,
        );
        let list: CompactCiphertextList =
            safe_deserialize_conformant(Cursor::new(body), limit::CONTRIBUTION, &conf)
                .map_err(|_| Error::Malformed("not a conformant ciphertext list"))?;
        if list.len() != layout.len() {
            return Err(Error::LengthMismatch);
        }
        let ex = list
            .expand_with_key(&self.hl)
            .map_err(|_| Error::Malformed("the ciphertext list does not expand"))?;
        let mut out = Vec::with_capacity(layout.len());
        for i in 0..layout.len() {
            let ct = if layout.is_narrow(i) {
                ex.get::<FheUint32>(i)
                    .ok()
                    .flatten()
                    .map(|c| c.into_raw_parts().0)
            } else {
                ex.get::<FheUint64>(i)
                    .ok()
                    .flatten()
                    .map(|c| c.into_raw_parts().0)
            };
            out.push(ct.ok_or(Error::Malformed("a ciphertext of the wrong type"))?);
        }
        Ok(out)
    }

    /// Add the contributions: unchecked additions while the blocks' carry
    /// space and noise allow (tfhe's own check), a carry propagation of the
    /// running sum only when the next addition would not be safe.
    pub fn sum(&self, layout: &Layout, contributions: &[Vec<u8>]) -> Result<Totals> {
        let mut stats = GateStats::default();
        let mut acc: Option<Vec<RadixCiphertext>> = None;
        for c in contributions {
            let cts = self.expand(layout, c)?;
            match acc.as_mut() {
                None => acc = Some(cts),
                Some(acc) => {
                    for (a, b) in acc.iter_mut().zip(&cts) {
                        if self.int.is_add_possible(a, b).is_err() {
                            self.int.full_propagate_parallelized(a);
                            stats.propagations += 1;
                        }
                        let mut b = b.clone();
                        if self.int.is_add_possible(a, &b).is_err() {
                            self.int.full_propagate_parallelized(&mut b);
                        }
                        self.int.unchecked_add_assign(a, &b);
                        stats.unchecked_adds += 1;
                    }
                }
            }
        }
        let cts = acc.ok_or(Error::State("no contributions"))?;
        Ok(Totals {
            cts,
            stats,
            layout: *layout,
        })
    }

    /// The gate: per cell `flag = count >= k`, and every total of the cell
    /// replaced by `flag ? total : 0`. Returns the sealed gated outputs for
    /// the key holder.
    pub fn gate(&self, totals: Totals, k: u32) -> Result<Vec<u8>> {
        let layout = totals.layout;
        let mut cts = totals.cts;
        // The compare and the selects need clean carries.
        rayon_free_propagate(&self.int, &mut cts);
        let mut flags = Vec::with_capacity(layout.cells);
        let mut values = Vec::with_capacity(layout.len());
        for c in 0..layout.cells {
            let cell = &cts[c * layout.stats..(c + 1) * layout.stats];
            let count = &cell[layout.count_at];
            let flag: BooleanBlock = self.int.scalar_ge_parallelized(count, u64::from(k));
            for (s, v) in cell.iter().enumerate() {
                let g: RadixCiphertext = self.int.if_then_else_parallelized(&flag, v, 0u64);
                values.push(GatedValue::new(g, layout.is_narrow(s)));
            }
            // A boolean block carries degree 1; as a 2-bit integer it is
            // declared clean (degree 3, an upper bound) to be conformant.
            let mut block = flag.into_raw_parts();
            block.degree = tfhe::shortint::ciphertext::Degree::new(3);
            let fb: RadixCiphertext = RadixCiphertext::from_blocks(vec![block]);
            flags.push(FheUint2::from_raw_parts(
                fb,
                FheUint2Id,
                Tag::default(),
                ReRandomizationMetadata::default(),
            ));
        }
        Gated { flags, values }.encode()
    }
}

fn rayon_free_propagate(sks: &tfhe::integer::ServerKey, cts: &mut [RadixCiphertext]) {
    for ct in cts.iter_mut() {
        if !ct.block_carries_are_empty() {
            sks.full_propagate_parallelized(ct);
        }
    }
}

/// The encrypted joint totals (layout order), before the gate.
#[derive(Clone)]
pub struct Totals {
    cts: Vec<RadixCiphertext>,
    pub stats: GateStats,
    layout: Layout,
}

impl std::fmt::Debug for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Totals({} ciphertexts, {:?})",
            self.cts.len(),
            self.stats
        )
    }
}

/// One gated total: counts stay 32-bit, the other totals 64-bit.
enum GatedValue {
    Count(FheUint32),
    Total(FheUint64),
}

impl GatedValue {
    fn new(ct: RadixCiphertext, narrow: bool) -> GatedValue {
        let (tag, meta) = (Tag::default(), ReRandomizationMetadata::default());
        if narrow {
            GatedValue::Count(FheUint32::from_raw_parts(ct, FheUint32Id, tag, meta))
        } else {
            GatedValue::Total(FheUint64::from_raw_parts(ct, FheUint64Id, tag, meta))
        }
    }

    fn decrypt(&self, key: &ClientKey) -> i128 {
        match self {
            GatedValue::Count(c) => i128::from(FheDecrypt::<u32>::decrypt(c, key)),
            GatedValue::Total(t) => i128::from(FheDecrypt::<u64>::decrypt(t, key) as i64),
        }
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        match self {
            GatedValue::Count(c) => safe_serialize(c, &mut b, limit::GATED),
            GatedValue::Total(t) => safe_serialize(t, &mut b, limit::GATED),
        }
        .map_err(|_| Error::Fhe("serialization over its limit"))?;
        Ok(b)
    }
}

/// The gated outputs: one flag per cell, one gated total per position.
struct Gated {
    flags: Vec<FheUint2>,
    values: Vec<GatedValue>,
}

impl Gated {
    /// `u32 count | (u32 len | sealed)…`, flags first.
    fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(WIRE_VERSION);
        out.push(Kind::Gated as u8);
        let n = (self.flags.len() + self.values.len()) as u32;
        out.extend_from_slice(&n.to_be_bytes());
        let mut put = |bytes: Vec<u8>| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
        };
        for f in &self.flags {
            let mut b = Vec::new();
            safe_serialize(f, &mut b, limit::GATED)
                .map_err(|_| Error::Fhe("serialization over its limit"))?;
            put(b);
        }
        for v in &self.values {
            put(v.serialize()?);
        }
        if out.len() as u64 > limit::GATED {
            return Err(Error::Fhe("gated outputs over their limit"));
        }
        Ok(out)
    }

    fn decode(layout: &Layout, bytes: &[u8]) -> Result<Gated> {
        let mut rest = unseal(Kind::Gated, bytes, limit::GATED)?;
        let mut take = |n: usize| -> Result<&[u8]> {
            let (a, b) = rest
                .split_at_checked(n)
                .ok_or(Error::Malformed("truncated gated outputs"))?;
            rest = b;
            Ok(a)
        };
        let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| Error::Malformed("count"))?)
            as usize;
        if count != layout.cells + layout.len() {
            return Err(Error::LengthMismatch);
        }
        let p = params();
        let mut flags = Vec::with_capacity(layout.cells);
        let mut values = Vec::with_capacity(layout.len());
        for i in 0..count {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| Error::Malformed("len"))?)
                as usize;
            let item = take(len)?;
            if i < layout.cells {
                let f: FheUint2 =
                    safe_deserialize_conformant(Cursor::new(item), limit::GATED, &p.into())
                        .map_err(|_| Error::Malformed("not a conformant gated flag"))?;
                flags.push(f);
            } else if layout.is_narrow(i - layout.cells) {
                let v: FheUint32 =
                    safe_deserialize_conformant(Cursor::new(item), limit::GATED, &p.into())
                        .map_err(|_| Error::Malformed("not a conformant gated count"))?;
                values.push(GatedValue::Count(v));
            } else {
                let v: FheUint64 =
                    safe_deserialize_conformant(Cursor::new(item), limit::GATED, &p.into())
                        .map_err(|_| Error::Malformed("not a conformant gated total"))?;
                values.push(GatedValue::Total(v));
            }
        }
        if !rest.is_empty() {
            return Err(Error::Malformed("trailing bytes after the gated outputs"));
        }
        Ok(Gated { flags, values })
    }
}

/// The plaintext gate the encrypted one must equal: per cell `None` when
/// the summed count is under `k`, else the summed totals.
pub fn plaintext_gate(layout: &Layout, contributions: &[Vec<i128>], k: u32) -> Vec<OpenedCell> {
    let mut sum = vec![0i128; layout.len()];
    for c in contributions {
        for (s, v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    (0..layout.cells)
        .map(|c| {
            let cell = &sum[c * layout.stats..(c + 1) * layout.stats];
            (cell[layout.count_at] >= i128::from(k)).then(|| cell.to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
    use super::*;
    use std::sync::OnceLock;

    fn keys() -> &'static (KeyHolder, PublicKeys) {
        static K: OnceLock<(KeyHolder, PublicKeys)> = OnceLock::new();
        K.get_or_init(|| KeyHolder::generate().unwrap())
    }

    #[test]
    fn the_encrypted_gate_equals_the_plaintext_gate() {
        let (holder, public) = keys();
        let enc = Encryptor::from_bytes(&public.compact_bytes().unwrap()).unwrap();
        let agg =
            Aggregator::from_bytes(&public.server_bytes().unwrap(), limit::SERVER_KEY).unwrap();
        // Three cells of (persons, rows, sum): the second misses k = 10
        // jointly although one party alone has 6; the third has a negative
        // sum. Rows are a narrow (32-bit) count.
        let layout = Layout::new(3, 3, 0).unwrap().narrow(1).unwrap();
        let parties: Vec<Vec<i128>> = vec![
            vec![5, 9, 1200, 6, 8, 40, 7, 7, -300],
            vec![4, 4, 800, 1, 1, 9, 3, 5, -25],
            vec![2, 3, 17, 2, 2, 3, 1, 1, 5],
        ];
        let sealed: Vec<Vec<u8>> = parties
            .iter()
            .map(|p| enc.encrypt(&layout, p, 3).unwrap())
            .collect();
        let totals = agg.sum(&layout, &sealed).unwrap();
        assert_eq!(totals.stats.unchecked_adds, 18);
        // Three fresh contributions fit the blocks' carry space.
        assert_eq!(totals.stats.propagations, 0);
        let gated = agg.gate(totals, 10).unwrap();
        let opened = holder.open(&layout, &gated).unwrap();
        let expected = plaintext_gate(&layout, &parties, 10);
        assert_eq!(opened, expected);
        assert_eq!(
            opened,
            vec![Some(vec![11, 16, 2017]), None, Some(vec![11, 13, -320])]
        );
    }

    #[test]
    fn many_contributions_propagate_carries_only_when_needed() {
        let (holder, public) = keys();
        let enc = Encryptor::new(public.compact.clone());
        let agg = Aggregator::new(public.server.clone());
        let layout = Layout::new(1, 2, 0).unwrap();
        let parties: Vec<Vec<i128>> = (0..8).map(|i| vec![3, 1000 + i]).collect();
        let sealed: Vec<Vec<u8>> = parties
            .iter()
            .map(|p| enc.encrypt(&layout, p, 8).unwrap())
            .collect();
        let totals = agg.sum(&layout, &sealed).unwrap();
        assert_eq!(totals.stats.unchecked_adds, 14);
        assert!(totals.stats.propagations >= 2, "{:?}", totals.stats);
        let opened = holder
            .open(&layout, &agg.gate(totals, 24).unwrap())
            .unwrap();
        assert_eq!(opened, vec![Some(vec![24, 8028])]);
    }

    #[test]
    fn malformed_and_oversized_inputs_are_rejected() {
        let (_, public) = keys();
        let enc = Encryptor::new(public.compact.clone());
        let agg = Aggregator::new(public.server.clone());
        let layout = Layout::new(2, 2, 0).unwrap();
        let good = enc.encrypt(&layout, &[1, 2, 3, 4], 3).unwrap();
        // Truncation, tfhe's own header damaged, random bytes of the same
        // length, a wrong envelope kind, a list of another layout. (A bit
        // flipped inside a ciphertext body is another valid ciphertext:
        // TFHE has no integrity, which the TLS links provide in transit.)
        let mut header = good.clone();
        header[12] ^= 0xFF;
        let mut random = good.clone();
        for (i, b) in random.iter_mut().enumerate().skip(6) {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        let mut bad_kind = good.clone();
        bad_kind[5] = Kind::Gated as u8;
        let other = enc
            .encrypt(&Layout::new(1, 2, 0).unwrap(), &[1, 2], 3)
            .unwrap();
        let truncated = good[..good.len() - 10].to_vec();
        for bytes in [&truncated, &header, &random, &bad_kind, &other] {
            assert!(agg.sum(&layout, std::slice::from_ref(bytes)).is_err());
        }
        // A server key over the reader's limit is refused before decoding.
        let sk = public.server_bytes().unwrap();
        assert!(matches!(
            Aggregator::from_bytes(&sk, 1 << 20),
            Err(Error::Fhe(_))
        ));
        // Out-of-range totals are refused at encryption.
        assert_eq!(
            enc.encrypt(&layout, &[-1, 0, 0, 0], 3),
            Err(Error::OutOfRange)
        );
    }

    #[test]
    fn a_key_holder_refuses_ungated_outputs() {
        let (holder, public) = keys();
        let enc = Encryptor::new(public.compact.clone());
        let agg = Aggregator::new(public.server.clone());
        let layout = Layout::new(1, 2, 0).unwrap();
        let sealed = vec![enc.encrypt(&layout, &[3, 77], 1).unwrap()];
        let totals = agg.sum(&layout, &sealed).unwrap();
        // A cheating aggregator sends flag 0 with the real totals.
        let cts = totals.cts.clone();
        // A real encryption of "false": 3 >= 1000 does not hold.
        let mut no = agg
            .int
            .scalar_ge_parallelized(&cts[0], 1000u64)
            .into_raw_parts();
        no.degree = tfhe::shortint::ciphertext::Degree::new(3);
        let zero = RadixCiphertext::from_blocks(vec![no]);
        let forged = Gated {
            flags: vec![FheUint2::from_raw_parts(
                zero,
                FheUint2Id,
                Tag::default(),
                ReRandomizationMetadata::default(),
            )],
            values: cts
                .into_iter()
                .enumerate()
                .map(|(i, c)| GatedValue::new(c, layout.is_narrow(i)))
                .collect(),
        }
        .encode()
        .unwrap();
        assert!(matches!(holder.open(&layout, &forged), Err(Error::Fhe(_))));
    }
}
