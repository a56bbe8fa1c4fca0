//! Scene-based consent: purposes, signed consent receipts, and the consent
//! filter applied at every base-table scan.
//!
//! **Purposes** follow the GA4GH Data Use Ontology (DUO). A scene declares
//! one primary purpose; a grant records the purpose the person agreed to and
//! covers a scene only when [`Purpose::covers`] says so:
//!
//! | grant | covers a scene whose purpose is |
//! |---|---|
//! | GRU (DUO:0000042, general research use) | GRU, HMB, any DS |
//! | HMB (DUO:0000006, health/medical/biomedical) | HMB, any DS |
//! | DS:X (DUO:0000007 with ICD-10 code X) | DS:X and DS:X.y (sub-codes of X) only |
//!
//! so a DS:E11 (type 2 diabetes) grant does not cover an oncology scene, nor
//! a scene whose purpose is later widened to HMB. Modifiers on a grant
//! restrict it further: NPU (DUO:0000018) needs a scene marked `non_profit`,
//! IRB (DUO:0000021) needs a scene with an ethics approval reference (`irb`),
//! and TS (DUO:0000025, time limit) is the grant's `until` date.
//!
//! **Boundaries.** All dates are UTC calendar days, inclusive at both ends.
//! A receipt takes effect when the registry commits it; a query reads the
//! consent registry once, at its start, and uses exactly the receipts
//! committed by then (the registry's consent sequence number at that read is
//! recorded in the query's audit entry). A grant whose `until` is before the
//! query's start date does not count.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StringArray, StringViewArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::UInt32Type;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::Kind;
use crate::closed::closed_set;
use crate::keys::SecretKey;
use crate::policy::{PersonKeyScheme, Scene};

pub use crate::purpose::Purpose;

closed_set! {
    /// What a consent receipt does.
    Verb {
        /// The person allows the scene to use their records.
        Grant => "grant",
        /// The person withdraws a grant.
        Revoke => "revoke",
    }
}

impl Verb {
    /// The audit entry kind that records this receipt.
    pub fn audit_kind(self) -> Kind {
        match self {
            Verb::Grant => Kind::ConsentGrant,
            Verb::Revoke => Kind::ConsentRevoke,
        }
    }
}

/// DUO modifiers a grant may carry.
pub const MODIFIERS: [&str; 2] = ["NPU", "IRB"];

/// What a person signs to grant or revoke a scene.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentReceipt {
    pub space: String,
    pub person: String,
    pub scene: String,
    pub action: Verb,
    /// The purpose agreed to (`GRU`, `HMB`, `DS:E11`).
    pub purpose: String,
    /// DUO modifiers: `NPU`, `IRB`.
    pub modifiers: Vec<String>,
    /// The organisation the grant is limited to (the scene's requester).
    pub requester: String,
    /// Last day the grant covers (UTC, inclusive); none: until revoked.
    pub until: Option<String>,
    pub nonce: String,
    pub time: String,
}

/// One receipt as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// The registry's consent sequence number: commit order.
    pub seq: u64,
    pub person: String,
    pub scene: String,
    pub action: Verb,
    pub purpose: String,
    pub modifiers: Vec<String>,
    pub requester: String,
    pub until: Option<String>,
    /// When the registry committed it (UTC).
    pub recorded_at: String,
    /// The receipt's entry in the registry's audit log.
    pub audit_seq: u64,
    /// The signed receipt, as the person signed it.
    pub receipt: String,
}

impl ConsentRecord {
    /// Does this (grant) record cover a query under `scene` on `date`?
    pub fn covers(&self, scene: &Scene, date: &str) -> bool {
        self.action == Verb::Grant
            && self.scene == scene.name
            && self.requester == scene.requester
            && self.until.as_deref().is_none_or(|u| date <= u)
            && Purpose::parse(&self.purpose, None).is_ok_and(|p| p.covers(&scene.purpose_code))
            && self.modifiers.iter().all(|m| match m.as_str() {
                "NPU" => scene.non_profit,
                "IRB" => scene.irb.is_some(),
                _ => false,
            })
    }
}

/// The persons whose grants cover `scene` on `date`, given every receipt
/// committed up to the snapshot (in commit order): each person's latest
/// receipt for the scene decides.
pub fn covered<'a>(
    records: impl IntoIterator<Item = &'a ConsentRecord>,
    scene: &Scene,
    date: &str,
) -> Vec<&'a str> {
    let mut latest: BTreeMap<&str, &ConsentRecord> = BTreeMap::new();
    for r in records {
        if r.scene == scene.name {
            latest.insert(r.person.as_str(), r);
        }
    }
    latest
        .into_iter()
        .filter(|(_, r)| r.covers(scene, date))
        .map(|(p, _)| p)
        .collect()
}

/// HMAC-SHA256 of a normalised ID number under the space's ID key.
pub fn id_digest(key: &SecretKey, id: &str) -> [u8; 32] {
    digest_with(&keyed(key), id)
}

/// The keyed digest of a person key under its dataset's scheme: what the
/// node's person index is keyed by, so that it names no one to whoever
/// reads it without the space's ID key. A national ID digests as
/// [`id_digest`] does (so an operator-issued certificate finds the same
/// person); record numbers and tokens are trimmed, not case-folded, and
/// digested under their scheme's name, so that the same text under two
/// schemes is two persons.
pub fn person_digest(key: &SecretKey, scheme: PersonKeyScheme, value: &str) -> [u8; 32] {
    PersonDigester::new(key, scheme).digest(value)
}

/// [`person_digest`] with the key schedule computed once.
pub struct PersonDigester {
    mac: Hmac<Sha256>,
    scheme: PersonKeyScheme,
}

impl std::fmt::Debug for PersonDigester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonDigester")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl PersonDigester {
    pub fn new(key: &SecretKey, scheme: PersonKeyScheme) -> Self {
        let mut mac = keyed(key);
        if scheme != PersonKeyScheme::NationalId {
            mac.update(b"kexin/person-key/v1\0");
            mac.update(scheme.as_str().as_bytes());
            mac.update(b"\0");
        }
        PersonDigester { mac, scheme }
    }

    pub fn digest(&self, value: &str) -> [u8; 32] {
        if self.scheme == PersonKeyScheme::NationalId {
            return digest_with(&self.mac, value);
        }
        let mut m = self.mac.clone();
        m.update(value.trim().as_bytes());
        m.finalize().into_bytes().into()
    }
}

fn keyed(key: &SecretKey) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// [`id_digest`] from a keyed HMAC state (cloned, so the key schedule is
/// computed once per batch rather than once per row).
fn digest_with(mac: &Hmac<Sha256>, id: &str) -> [u8; 32] {
    let mut m = mac.clone();
    let t = id.trim();
    if t.bytes().any(|b| b.is_ascii_lowercase()) {
        m.update(t.to_ascii_uppercase().as_bytes());
    } else {
        m.update(t.as_bytes());
    }
    m.finalize().into_bytes().into()
}

/// The persons who may contribute to one query: keyed digests of their ID
/// numbers, read once at the query's start.
#[derive(Clone)]
pub struct ConsentSet {
    pub digests: Arc<HashSet<[u8; 32]>>,
    /// On a node whose datasets are loaded: the same persons as ordinals
    /// of its person index, which the scan filter tests instead of
    /// digesting each row's key.
    pub ordinals: Option<Arc<roaring::RoaringBitmap>>,
    /// The members whose grants cover the scene (a node adds the person
    /// keys its data holders bound to them).
    pub persons: Arc<Vec<String>>,
    key: SecretKey,
    /// The registry's consent sequence number the set was read at.
    pub seq: u64,
}

impl std::fmt::Debug for ConsentSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentSet")
            .field("persons", &self.digests.len())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl ConsentSet {
    pub fn new(digests: HashSet<[u8; 32]>, key: SecretKey, seq: u64) -> Self {
        ConsentSet {
            digests: Arc::new(digests),
            ordinals: None,
            persons: Arc::new(Vec::new()),
            key,
            seq,
        }
    }

    /// The members the set was read for.
    pub fn with_persons(mut self, persons: Vec<String>) -> Self {
        self.persons = Arc::new(persons);
        self
    }

    /// More persons' digests: the keys a node's data holders bound to the
    /// set's members.
    pub fn with_digests(mut self, more: impl IntoIterator<Item = [u8; 32]>) -> Self {
        let mut all = (*self.digests).clone();
        all.extend(more);
        self.digests = Arc::new(all);
        self
    }

    /// The set's persons as a node's person ordinals (see
    /// [`ConsentSet::ordinals`]).
    pub fn with_ordinals(mut self, ordinals: roaring::RoaringBitmap) -> Self {
        self.ordinals = Some(Arc::new(ordinals));
        self
    }

    /// SHA-256 over the sorted digests: which persons the query could use,
    /// recorded in the audit log without naming them.
    pub fn digest(&self) -> String {
        let mut v: Vec<&[u8; 32]> = self.digests.iter().collect();
        v.sort();
        let mut h = Sha256::new();
        for d in v {
            h.update(d);
        }
        hex::encode(h.finalize())
    }

    /// Is the person with this ID number in the set? (The scan filter does
    /// the same per batch.)
    pub fn contains(&self, id: &str) -> bool {
        self.digests.contains(&id_digest(&self.key, id))
    }

    /// The scan filter `kexin_consent(person)`: true for persons in the
    /// set, given a loaded dataset's ordinals or the text of person keys
    /// under `scheme`.
    pub fn into_udf(self, scheme: PersonKeyScheme) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(ConsentFilter {
            signature: Signature::new(
                TypeSignature::Uniform(
                    1,
                    vec![
                        DataType::Utf8,
                        DataType::Utf8View,
                        DataType::LargeUtf8,
                        DataType::UInt32,
                    ],
                ),
                Volatility::Immutable,
            ),
            set: self,
            scheme,
        }))
    }
}

#[derive(Debug)]
struct ConsentFilter {
    signature: Signature,
    set: ConsentSet,
    scheme: PersonKeyScheme,
}

impl PartialEq for ConsentFilter {
    fn eq(&self, o: &Self) -> bool {
        self.set.seq == o.set.seq
            && self.scheme == o.scheme
            && Arc::ptr_eq(&self.set.digests, &o.set.digests)
    }
}
impl Eq for ConsentFilter {}
impl std::hash::Hash for ConsentFilter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.set.seq.hash(state);
    }
}

impl ScalarUDFImpl for ConsentFilter {
    fn name(&self) -> &str {
        "kexin_consent"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return datafusion::common::exec_err!("kexin_consent takes one argument");
        };
        let arr: ArrayRef = arg.to_array(args.number_rows)?;
        if let Some(ords) = arr.as_primitive_opt::<UInt32Type>() {
            // Person ordinals: a bitmap test per row.
            let Some(set) = &self.set.ordinals else {
                return datafusion::common::exec_err!("kexin_consent: no ordinal set");
            };
            let out: BooleanArray = ords
                .iter()
                .map(|o| Some(o.is_some_and(|o| set.contains(o))))
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        // One HMAC per distinct person in the batch: a person's rows often
        // sit together, and the HMAC costs ten times the lookup.
        let digester = PersonDigester::new(&self.set.key, self.scheme);
        let mut seen: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        let mut test = |v: Option<&str>| {
            let Some(v) = v else { return Some(false) };
            if let Some(&b) = seen.get(v) {
                return Some(b);
            }
            let b = self.set.digests.contains(&digester.digest(v));
            seen.insert(v.to_string(), b);
            Some(b)
        };
        let out: BooleanArray = if let Some(a) = arr.as_any().downcast_ref::<StringViewArray>() {
            a.iter().map(&mut test).collect()
        } else if let Some(a) = arr.as_any().downcast_ref::<StringArray>() {
            a.iter().map(&mut test).collect()
        } else {
            let a = datafusion::arrow::compute::cast(&arr, &DataType::Utf8)?;
            let a = a
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| datafusion::common::DataFusionError::Internal("cast".into()))?;
            a.iter().map(&mut test).collect()
        };
        debug_assert_eq!(out.len(), arr.len());
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Purpose {
        Purpose::parse(s, None).unwrap()
    }

    #[test]
    fn duo_matching() {
        assert_eq!(
            Purpose::parse("DUO:0000007", Some("e11")).unwrap(),
            p("DS:E11")
        );
        assert!(p("DS:E11").covers(&p("DS:E11")));
        assert!(p("DS:E11").covers(&p("DS:E11.9")));
        assert!(!p("DS:E11.9").covers(&p("DS:E11")));
        assert!(
            !p("DS:E11.1").covers(&p("DS:E11.11")),
            "no bare prefix match"
        );
        assert!(
            !p("DS:E11").covers(&p("DS:C50")),
            "diabetes grant, oncology scene"
        );
        assert!(!p("DS:E11").covers(&p("HMB")));
        assert!(p("HMB").covers(&p("DS:C50")) && !p("HMB").covers(&p("GRU")));
        assert!(p("GRU").covers(&p("HMB")));
        assert!(Purpose::parse("DS", None).is_err());
        assert!(Purpose::parse("DS:diabetes", None).is_err());
        assert!(Purpose::parse("NPU", None).is_err());
    }

    #[test]
    fn latest_receipt_decides() {
        let space = crate::policy::Space::parse(
            std::path::Path::new("."),
            "t",
            crate::policy::tests::GOOD,
            [0; 32],
        )
        .unwrap();
        let scene = space.scenes.values().next().unwrap().clone();
        let rec =
            |seq, person: &str, action: Verb, until: Option<&str>, purpose: &str| ConsentRecord {
                seq,
                person: person.into(),
                scene: scene.name.clone(),
                action,
                purpose: purpose.into(),
                modifiers: vec![],
                requester: scene.requester.clone(),
                until: until.map(str::to_string),
                recorded_at: String::new(),
                audit_seq: 0,
                receipt: String::new(),
            };
        let all = [
            rec(1, "p1", Verb::Grant, None, "GRU"),
            rec(2, "p2", Verb::Grant, Some("2027-06-30"), "GRU"),
            rec(3, "p3", Verb::Grant, None, "GRU"),
            rec(4, "p3", Verb::Revoke, None, "GRU"),
            rec(5, "p4", Verb::Grant, None, "DS:C50"),
        ];
        assert_eq!(covered(&all, &scene, "2027-06-30"), ["p1", "p2"]);
        assert_eq!(covered(&all, &scene, "2027-07-01"), ["p1"]);
        assert_eq!(covered(&all[..3], &scene, "2027-01-01"), ["p1", "p2", "p3"]);
    }

    #[test]
    fn the_filter_keeps_only_consenting_persons() {
        let key = SecretKey::from_bytes([3; 32]);
        let set: HashSet<_> = [id_digest(&key, "11010519491231002x")].into();
        let s = ConsentSet::new(set, key, 7);
        assert!(s.contains("11010519491231002X"));
        assert!(!s.contains("110105194912310029"));
        assert_eq!(s.digest().len(), 64);
    }
}
