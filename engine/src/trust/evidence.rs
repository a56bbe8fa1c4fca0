//! Portable evidence: one audit entry, with everything needed to check
//! offline — without the node's folder or server — that the node recorded
//! it and what it binds.
//!
//! A bundle chains from the space's operator key, which the checker holds
//! (space.toml's `operator_key`), down to the entry:
//!
//! ```text
//!   operator key ──certifies──> node member key (certificate, role node)
//!   node member key ──signs──> "node h1's log is signed by verifier V" (log key)
//!   V ──signs──> checkpoint (origin kexin/<space>/h1, size, root)
//!   root ──RFC 9162 inclusion path──> leaf = H(0x00 ‖ entry)
//!   entry ──binds──> SQL, plan, policy, data, consent set, output, contract
//! ```
//!
//! and, for each witness that countersigned the same checkpoint, the same
//! chain for the witness's key: a node that later showed another history
//! (a fork) would contradict a countersignature held by a third party.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, Checkpoint, NoteKey};
use crate::error::{Error, Result};
use crate::identity::{Certificate, Role, Signed, tag};
use crate::store::AuditProof;
use crate::witness::origin;

/// The format line of a bundle; a checker refuses any other.
pub const FORMAT: &str = "kexin-evidence/1";

/// A node's statement, signed with its certified member key, that its audit
/// log's checkpoints are signed by `verifier` (a signed-note verifier key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogKey {
    pub space: String,
    pub node: String,
    pub verifier: String,
    pub time: String,
}

/// Why the checker may trust a node's log key: the node member's
/// certificate (issued by the operator) and its signed [`LogKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vouch {
    pub certificate: Signed<Certificate>,
    pub log_key: Signed<LogKey>,
}

/// A witness's countersignature of the bundle's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosignature {
    pub witness: String,
    /// The checkpoint's body signed by the witness's log key (a signed note).
    pub note: String,
    pub vouch: Vouch,
}

/// What an entry binds, by digest (absent where the entry has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_sha256: Option<String>,
    pub policy_sha256: String,
    /// Dataset → SHA-256 of the node's copy as loaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Binds {
    pub fn of(e: &AuditEntry) -> Binds {
        Binds {
            sql_sha256: e.sql_sha256.clone(),
            plan_sha256: e.plan_sha256.clone(),
            policy_sha256: e.policy_sha256.clone(),
            data: e.data.clone(),
            consent_sha256: e.consent_sha256.clone(),
            consent_seq: e.consent_seq,
            udfs: e.udfs.clone(),
            output_sha256: e.output_sha256.clone(),
            contract: e.contract.clone(),
            session: e.session.clone(),
        }
    }
}

/// One audit entry's evidence (`kexin audit prove --out`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub space: String,
    pub node: String,
    /// The operator key the writer checked the bundle against (hex). A
    /// checker pins its own copy; this one is shown, never trusted.
    pub operator_key: String,
    /// The entry (its JSON, as hashed into the log), the leaf, the path and
    /// the node-signed checkpoint.
    pub proof: AuditProof,
    pub vouch: Vouch,
    #[serde(default)]
    pub witnesses: Vec<Cosignature>,
    /// What the entry binds, repeated for the reader (checked against the
    /// entry).
    pub binds: Binds,
}

/// What a bundle proved.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub space: String,
    pub node: String,
    pub seq: u64,
    /// The tree size of the checkpoint.
    pub size: u64,
    /// The root of the checkpoint (hex).
    pub root: String,
    /// The certified node member that vouched for the log key.
    pub node_member: String,
    /// The witnesses whose countersignature of the checkpoint checked, with
    /// the certified member that vouched for each one's log key.
    pub witnesses: BTreeMap<String, String>,
    pub entry: AuditEntry,
    pub binds: Binds,
}

fn fail<T>(why: impl Into<String>) -> Result<T> {
    Err(Error::Verify(format!("evidence: {}", why.into())))
}

impl Vouch {
    /// The log key of node `node` of space `space`, as vouched for under
    /// `operator`: the certificate is the operator's, of a member with the
    /// node role, valid when it signed the log key, and the log key is
    /// signed by that member, for this space and node, and named after the
    /// node's log. Returns (member, key).
    pub fn check(
        &self,
        space: &str,
        node: &str,
        operator: &VerifyingKey,
    ) -> Result<(String, NoteKey)> {
        let lk = &self.log_key.body;
        let day = lk.time.get(..10).unwrap_or("");
        let member_key = self.certificate.check(space, operator, day).or_else(|_| {
            fail(format!(
                "node {node}'s certificate does not check under the operator key"
            ))
        })?;
        if self.certificate.body.role != Role::Node {
            return fail(format!("node {node}'s certificate is not for a node"));
        }
        if lk.space != space || lk.node != node {
            return fail(format!(
                "node {node}'s log key is for another space or node"
            ));
        }
        self.log_key
            .verify(tag::LOG_KEY, &member_key, crate::error::Code::Witness)
            .or_else(|_| {
                fail(format!(
                    "node {node}'s log key is not signed by its certified key"
                ))
            })?;
        let key = NoteKey::parse(&lk.verifier)
            .or_else(|_| fail(format!("node {node}'s log key does not parse")))?;
        if key.name != origin(space, node) {
            return fail(format!("node {node}'s log key is named for another log"));
        }
        Ok((self.certificate.body.member.clone(), key))
    }
}

impl Bundle {
    /// Check every link of the chain under the operator key the checker
    /// holds. Any changed byte of the entry, the proof, the checkpoint, a
    /// certificate or a signature fails.
    pub fn check(&self, operator: &VerifyingKey) -> Result<Checked> {
        if self.format != FORMAT {
            return fail(format!("not a {FORMAT} bundle"));
        }
        let (member, key) = self.vouch.check(&self.space, &self.node, operator)?;
        self.proof.check(&key)?;
        let cp = Checkpoint::open(&self.proof.checkpoint, &key)?;
        if cp.origin != origin(&self.space, &self.node) {
            return fail("the checkpoint is of another log");
        }
        let Some(text) = &self.proof.entry else {
            return fail("the bundle holds no entry");
        };
        let entry: AuditEntry =
            serde_json::from_str(text).or_else(|_| fail("the entry does not parse"))?;
        if entry.seq != self.proof.seq || entry.node != self.node {
            return fail("the entry is not the one the proof is for");
        }
        let binds = Binds::of(&entry);
        if binds != self.binds {
            return fail("the digests listed differ from the entry's");
        }
        let mut witnesses = BTreeMap::new();
        for w in &self.witnesses {
            if w.witness == self.node {
                return fail("a node does not witness its own log");
            }
            let (wmember, wkey) = w.vouch.check(&self.space, &w.witness, operator)?;
            let theirs = Checkpoint::open(&w.note, &wkey).or_else(|_| {
                fail(format!(
                    "witness {}'s countersignature does not check",
                    w.witness
                ))
            })?;
            if theirs != cp {
                return fail(format!(
                    "witness {} countersigned another checkpoint",
                    w.witness
                ));
            }
            if witnesses.insert(w.witness.clone(), wmember).is_some() {
                return fail(format!("witness {} is listed twice", w.witness));
            }
        }
        Ok(Checked {
            space: self.space.clone(),
            node: self.node.clone(),
            seq: self.proof.seq,
            size: cp.size,
            root: hex::encode(cp.root),
            node_member: member,
            witnesses,
            entry,
            binds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Kind};
    use crate::identity::Certificate;
    use crate::store::{NodeKeys, Store};
    use ed25519_dalek::SigningKey;

    const SPACE: &str = "s";

    fn cert(op: &SigningKey, member: &str, key: &SigningKey) -> Signed<Certificate> {
        Signed::sign(
            tag::CERTIFICATE,
            Certificate {
                space: SPACE.into(),
                member: member.into(),
                role: Role::Node,
                org: "hospital".into(),
                public_key: hex::encode(key.verifying_key().as_bytes()),
                real_name_verified: false,
                id_digest: None,
                issued_at: "2026-01-01T00:00:00Z".into(),
                valid_to: "2030-12-31".into(),
            },
            op,
        )
        .unwrap()
    }

    fn vouch(op: &SigningKey, node: &str, member: &SigningKey, keys: &NodeKeys) -> Vouch {
        Vouch {
            certificate: cert(op, &format!("node-{node}"), member),
            log_key: Signed::sign(
                tag::LOG_KEY,
                LogKey {
                    space: SPACE.into(),
                    node: node.into(),
                    verifier: keys.note.verifier_key(),
                    time: "2026-06-01T00:00:00Z".into(),
                },
                member,
            )
            .unwrap(),
        }
    }

    /// A log of three entries on h1, witnessed by h2; the bundle of entry 2.
    fn bundle() -> (Bundle, SigningKey) {
        let op = SigningKey::from_bytes(&[7; 32]);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k1 = NodeKeys::load_or_create(a.path(), &origin(SPACE, "h1")).unwrap();
        let k2 = NodeKeys::load_or_create(b.path(), &origin(SPACE, "h2")).unwrap();
        let mut log = Store::open(a.path(), &origin(SPACE, "h1")).unwrap();
        for i in 0..3 {
            let mut e = AuditEntry::new(
                "h1",
                "alice",
                "sc",
                Kind::Query,
                Decision::Released,
                &[i; 32],
            );
            e.sql_sha256 = Some(format!("{i:064}"));
            log.append(e, &k1).unwrap();
        }
        let proof = log.proof(2).unwrap().unwrap();
        let cp = Checkpoint::open(&proof.checkpoint, &k1.note).unwrap();
        let entry: AuditEntry = serde_json::from_str(proof.entry.as_deref().unwrap()).unwrap();
        let (m1, m2) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let b = Bundle {
            format: FORMAT.into(),
            space: SPACE.into(),
            node: "h1".into(),
            operator_key: hex::encode(op.verifying_key().as_bytes()),
            binds: Binds::of(&entry),
            proof,
            vouch: vouch(&op, "h1", &m1, &k1),
            witnesses: vec![Cosignature {
                witness: "h2".into(),
                note: cp.sign(&k2.note.name, &k2.signing),
                vouch: vouch(&op, "h2", &m2, &k2),
            }],
        };
        (b, op)
    }

    #[test]
    fn a_bundle_checks_offline_under_the_operator_key() {
        let (b, op) = bundle();
        let c = b.check(&op.verifying_key()).expect("checks");
        assert_eq!((c.seq, c.size), (2, 3));
        assert_eq!(c.witnesses.get("h2").map(String::as_str), Some("node-h2"));
        assert_eq!(c.node_member, "node-h1");
        // Another operator key: nothing checks.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(b.check(&other).is_err());
    }

    #[test]
    fn any_changed_byte_of_entry_proof_or_checkpoint_fails() {
        let (b, op) = bundle();
        let op = op.verifying_key();
        let flip = |s: &str, i: usize| -> String {
            let mut bytes = s.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let entry = b.proof.entry.clone().unwrap();
        for i in 0..entry.len() {
            let mut x = b.clone();
            x.proof.entry = Some(flip(&entry, i));
            assert!(x.check(&op).is_err(), "entry byte {i}");
        }
        for i in 0..b.proof.checkpoint.len() {
            let mut x = b.clone();
            x.proof.checkpoint = flip(&b.proof.checkpoint, i);
            // A changed byte of the note's final newline or signature
            // padding still leaves a note that must not check.
            assert!(x.check(&op).is_err(), "checkpoint byte {i}");
        }
        for (p, h) in b.proof.path.iter().enumerate() {
            for i in 0..h.len() {
                let mut x = b.clone();
                x.proof.path[p] = flip(h, i);
                assert!(x.check(&op).is_err(), "path {p} byte {i}");
            }
        }
        for i in 0..b.proof.leaf.len() {
            let mut x = b.clone();
            x.proof.leaf = flip(&b.proof.leaf, i);
            assert!(x.check(&op).is_err(), "leaf byte {i}");
        }
        let mut x = b.clone();
        x.proof.seq = 3;
        assert!(x.check(&op).is_err());
        let mut x = b.clone();
        x.binds.sql_sha256 = Some("0".repeat(64));
        assert!(x.check(&op).is_err());
        let w = &b.witnesses[0].note;
        for i in 0..w.len() {
            let mut x = b.clone();
            x.witnesses[0].note = flip(w, i);
            assert!(x.check(&op).is_err(), "countersignature byte {i}");
        }
        // A witness vouched for as another node does not check.
        let mut x = b.clone();
        x.witnesses[0].witness = "h3".into();
        assert!(x.check(&op).is_err());
    }
}
