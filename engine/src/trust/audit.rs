//! The append-only Merkle audit log and its signed checkpoints.
//!
//! Leaves and interior nodes are hashed as in RFC 6962 §2.1 (RFC 9162 §2.1.1):
//! `leaf = SHA-256(0x00 ‖ entry)`, `node = SHA-256(0x01 ‖ left ‖ right)`, with
//! the tree split at the largest power of two below its size. After every
//! append the node signs a checkpoint in the C2SP `tlog-checkpoint` format, as
//! a C2SP `signed-note` with an Ed25519 signature:
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\n
//! \n
//! — <key name> <base64(key id ‖ signature)>\n
//! ```
//!
//! where the key id is the first four bytes of
//! `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)`. The latest checkpoint is
//! also written to a head file next to the database, so a database restored
//! from an older copy (rollback) no longer matches it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::closed::closed_set;
use crate::error::{Error, Result};

pub type Hash = [u8; 32];

/// One audit record. Digests and counts only: never a raw value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub node: String,
    pub actor: String,
    pub scene: String,
    /// A [`Kind`]'s string. Kept as text: logs written before the kinds
    /// were a closed set hold `contract-<action>` and `airlock-<action>`
    /// with the action as a caller sent it, and must still verify.
    pub kind: String,
    /// A [`Decision`]'s string (text, like `kind`).
    pub decision: String,
    pub code: Option<String>,
    pub rule: Option<String>,
    pub sql_sha256: Option<String>,
    pub plan_sha256: Option<String>,
    pub policy_sha256: String,
    pub output_sha256: Option<String>,
    pub rows_released: u64,
    pub suppressed_groups: u64,
    /// Digests of the UDF modules a query called, or the module a
    /// registration approved. Absent from entries that involve none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<String>,
    /// DP scenes: the ε this query charged to the researcher's budget (0 for
    /// a repeat answered from the release cache). Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// DP scenes: the audit entry whose answer a repeated query received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<u64>,
    /// The contract a query ran under, or a contract state change concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Consent scenes: the registry's consent sequence number the query read
    /// its consent set at (so a person's history can be recomputed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_seq: Option<u64>,
    /// Consent scenes: SHA-256 over the sorted ID digests of the persons the
    /// query could use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_sha256: Option<String>,
    /// Federated computations: the session digest, the same in every
    /// participating node's log (SHA-256 of the researcher's signed request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `budget-charge` entries: the node whose DP release the charge is
    /// for (each node records every charge made in the space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_by: Option<String>,
    /// 16 random bytes (hex), set when the entry is appended, so that its
    /// leaf hash reveals nothing to those who may not see the entry (an
    /// inclusion proof or a page of the log shows other entries' leaves).
    /// Absent from entries written before leaves were salted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The data an entry concerns: dataset name → SHA-256 of the node's
    /// copy as loaded (`kexin dataset show`). Queries and joint
    /// computations bind the scene's datasets; a `dataset-load` entry, the
    /// copy it made. Absent where no loaded dataset is involved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Dispute entries: the audit entry the dispute is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concerns: Option<u64>,
    /// Results that passed the gate: a commitment (SHA-256 over a private
    /// salt) to what this node's data contributed, persons and rows. The
    /// values are exact, so they are kept in the node's private accounting
    /// and shown only to its data holders and the operator (accounting
    /// statements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution: Option<String>,
}

closed_set! {
    /// What an audit entry records.
    Kind {
        /// A researcher's query on one node.
        Query => "query",
        /// One node's part of a federated query.
        Federated => "federated",
        /// One node's part of a private set intersection.
        Psi => "psi",
        /// A Prio3 batch collection.
        Collection => "collection",
        /// An individual's Prio3 report.
        Contribution => "contribution",
        /// A DP charge recorded for a node of the space.
        BudgetCharge => "budget-charge",
        /// A UDF module approved for a scene.
        UdfRegister => "udf-register",
        /// A UDF module submitted for approval by a researcher.
        UdfSubmit => "udf-submit",
        ContractOffer => "contract-offer",
        ContractAgree => "contract-agree",
        ContractFinalize => "contract-finalize",
        ContractTerminate => "contract-terminate",
        AirlockApprove => "airlock-approve",
        AirlockReject => "airlock-reject",
        /// The approval that released a held result.
        AirlockRelease => "airlock-release",
        /// A refused request to see a held result.
        AirlockFetch => "airlock-fetch",
        ConsentGrant => "consent-grant",
        ConsentRevoke => "consent-revoke",
        /// A member certificate issued by the registry.
        IdentityIssue => "identity-issue",
        /// A dataset loaded into the node's copy (`kexin dataset add`).
        DatasetLoad => "dataset-load",
        /// A data holder bound an individual to a person key of the node.
        PersonBind => "person-bind",
        /// A party opened a dispute over an entry (`concerns`).
        DisputeOpen => "dispute-open",
        /// A dispute was upheld, dismissed or withdrawn.
        DisputeResolve => "dispute-resolve",
    }
}

closed_set! {
    /// How an audited action ended.
    Decision {
        Released => "released",
        Refused => "refused",
        /// A federated round that ended with no release.
        Aborted => "aborted",
        /// A result held in the airlock for review.
        Held => "held",
        Accepted => "accepted",
        Approved => "approved",
        Rejected => "rejected",
        Offered => "offered",
        Agreed => "agreed",
        Finalized => "finalized",
        Terminated => "terminated",
        Recorded => "recorded",
        Issued => "issued",
        /// A dispute opened.
        Opened => "opened",
        Upheld => "upheld",
        Dismissed => "dismissed",
        Withdrawn => "withdrawn",
    }
}

impl AuditEntry {
    /// An entry stamped now, with no digests, counts or optional facts:
    /// what governance actions record. Callers set the fields that apply.
    pub fn new(
        node: &str,
        actor: &str,
        scene: &str,
        kind: Kind,
        decision: Decision,
        policy_digest: &[u8; 32],
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            time: crate::clock::now_utc().1,
            node: node.to_string(),
            actor: actor.to_string(),
            scene: scene.to_string(),
            kind: kind.as_str().to_string(),
            decision: decision.as_str().to_string(),
            code: None,
            rule: None,
            sql_sha256: None,
            plan_sha256: None,
            policy_sha256: hex::encode(policy_digest),
            output_sha256: None,
            rows_released: 0,
            suppressed_groups: 0,
            udfs: vec![],
            epsilon: None,
            repeat_of: None,
            contract: None,
            consent_seq: None,
            consent_sha256: None,
            session: None,
            charged_by: None,
            salt: None,
            data: BTreeMap::new(),
            concerns: None,
            contribution: None,
        }
    }

    /// Record how the action ended.
    pub fn decide(&mut self, d: Decision) {
        self.decision = d.as_str().to_string();
    }
}

pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// RFC 6962 Merkle Tree Hash of a list of leaf hashes.
pub fn tree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            // The largest power of two strictly below n.
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node_hash(&tree_root(&leaves[..k]), &tree_root(&leaves[k..]))
        }
    }
}

/// The inclusion proof (audit path) of leaf `index` in the tree of
/// `leaves`: RFC 9162 §2.1.3.1. Empty for a one-leaf tree or an index
/// outside it.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    let (mut path, sibling) = if index < k {
        (
            inclusion_proof(&leaves[..k], index),
            tree_root(&leaves[k..]),
        )
    } else {
        (
            inclusion_proof(&leaves[k..], index - k),
            tree_root(&leaves[..k]),
        )
    };
    path.push(sibling);
    path
}

/// The root that `proof` makes of `leaf` at `index` in a tree of `size`
/// leaves (RFC 9162 §2.1.3.2), or `None` when the proof has the wrong
/// length for that position. The leaf is in the tree whose root this
/// equals.
pub fn root_from_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// The checkpoint signer/verifier identity of one node.
#[derive(Debug, Clone)]
pub struct NoteKey {
    pub name: String,
    pub public: VerifyingKey,
}

impl NoteKey {
    pub fn key_id(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update(b"\n");
        h.update([0x01]);
        h.update(self.public.as_bytes());
        let d = h.finalize();
        [d[0], d[1], d[2], d[3]]
    }

    /// Parse a verifier key string (the inverse of [`Self::verifier_key`]);
    /// the key id must match the name and key.
    pub fn parse(text: &str) -> Result<NoteKey> {
        let bad = |why: &str| Error::Verify(format!("verifier key: {why}"));
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("malformed"));
        };
        let raw = B64.decode(key).map_err(|_| bad("malformed"))?;
        let bytes: [u8; 32] = match raw.as_slice() {
            [0x01, rest @ ..] => rest.try_into().map_err(|_| bad("malformed"))?,
            _ => return Err(bad("not an Ed25519 key")),
        };
        let public = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid key"))?;
        let k = NoteKey {
            name: name.to_string(),
            public,
        };
        if hex::encode(k.key_id()) != id {
            return Err(bad("the key id does not match"));
        }
        Ok(k)
    }

    /// The signed-note verifier key string: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub fn verifier_key(&self) -> String {
        let mut k = vec![0x01];
        k.extend_from_slice(self.public.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(k)
        )
    }
}

/// A parsed, verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Sign as a C2SP signed note.
    pub fn sign(&self, name: &str, key: &SigningKey) -> String {
        let body = self.body();
        let sig: Signature = key.sign(body.as_bytes());
        let nk = NoteKey {
            name: name.to_string(),
            public: key.verifying_key(),
        };
        let mut blob = nk.key_id().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {name} {}\n", B64.encode(blob))
    }

    /// Parse a signed note and verify its signature by `key`.
    pub fn open(note: &str, key: &NoteKey) -> Result<Checkpoint> {
        let bad = |why: &str| Error::Verify(format!("checkpoint: {why}"));
        let (body, sigs) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("no signature block"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines.next().ok_or_else(|| bad("no origin"))?.to_string();
        let size: u64 = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad size"))?;
        let root_b = lines
            .next()
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| bad("bad root"))?;
        let root: Hash = root_b.try_into().map_err(|_| bad("root is not 32 bytes"))?;
        let mut verified = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad("malformed signature line"));
            };
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("malformed signature line"))?;
            if name != key.name {
                continue;
            }
            let blob = B64
                .decode(b64)
                .map_err(|_| bad("signature is not base64"))?;
            if blob.len() != 68 || blob[..4] != key.key_id() {
                continue;
            }
            let sig_bytes: [u8; 64] = blob[4..].try_into().map_err(|_| bad("signature length"))?;
            let sig = Signature::from_bytes(&sig_bytes);
            key.public
                .verify_strict(body.as_bytes(), &sig)
                .map_err(|_| bad("signature does not verify"))?;
            verified = true;
        }
        if !verified {
            return Err(bad("no valid signature by the node key"));
        }
        Ok(Checkpoint { origin, size, root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).unwrap();
        v.try_into().unwrap()
    }

    /// Known answers from the RFC 6962 reference test data (Certificate
    /// Transparency `merkle_tree_test`): roots of the first n of eight leaves.
    #[test]
    fn rfc6962_known_roots() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            vec![
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let leaves: Vec<Hash> = inputs.iter().map(|i| leaf_hash(i)).collect();
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (n, e) in expected.iter().enumerate() {
            assert_eq!(tree_root(&leaves[..=n]), h(e), "root of {} leaves", n + 1);
        }
        assert_eq!(
            tree_root(&[]),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn checkpoint_sign_and_open() {
        let sk = SigningKey::from_bytes(&[9; 32]);
        let key = NoteKey {
            name: "kexin/t/h1".into(),
            public: sk.verifying_key(),
        };
        let cp = Checkpoint {
            origin: "kexin/t/h1".into(),
            size: 3,
            root: [5; 32],
        };
        let note = cp.sign("kexin/t/h1", &sk);
        assert!(note.starts_with("kexin/t/h1\n3\n"));
        assert_eq!(Checkpoint::open(&note, &key).unwrap(), cp);
        let tampered = note.replacen("\n3\n", "\n4\n", 1);
        assert!(Checkpoint::open(&tampered, &key).is_err());
        let other = NoteKey {
            name: "kexin/t/h1".into(),
            public: SigningKey::from_bytes(&[8; 32]).verifying_key(),
        };
        assert!(Checkpoint::open(&note, &other).is_err());
        assert!(key.verifier_key().starts_with("kexin/t/h1+"));
    }

    /// The reference tree of Certificate Transparency's Merkle tests
    /// (RFC 6962 hashing): its published roots for sizes 1..=8 and audit
    /// paths, then every leaf of every tree up to 40 leaves.
    #[test]
    fn inclusion_proofs_match_the_reference_tree() {
        let leaves: Vec<Hash> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| leaf_hash(&hex::decode(h).unwrap()))
        .collect();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (n, root) in roots.iter().enumerate() {
            assert_eq!(
                hex::encode(tree_root(&leaves[..=n])),
                *root,
                "size {}",
                n + 1
            );
        }
        let path = |p: &[Hash]| p.iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            path(&inclusion_proof(&leaves, 0)),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        assert_eq!(
            path(&inclusion_proof(&leaves, 5)),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        let many: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=many.len() {
            let root = tree_root(&many[..n]);
            for i in 0..n {
                let proof = inclusion_proof(&many[..n], i);
                let (i, size) = (i as u64, n as u64);
                assert_eq!(
                    root_from_inclusion(&many[i as usize], i, size, &proof),
                    Some(root)
                );
                // Another leaf, position or size does not give the root.
                let other = many[(i as usize + 1) % n];
                if n > 1 {
                    assert_ne!(root_from_inclusion(&other, i, size, &proof), Some(root));
                    assert_ne!(
                        root_from_inclusion(&many[i as usize], (i + 1) % size, size, &proof),
                        Some(root)
                    );
                }
                // Nor does it prove the leaf in the next, larger tree.
                if n < many.len() {
                    assert_ne!(
                        root_from_inclusion(&many[i as usize], i, size + 1, &proof),
                        Some(tree_root(&many[..=n])),
                        "leaf {i} of {size}"
                    );
                }
            }
        }
        assert_eq!(root_from_inclusion(&many[0], 3, 3, &[]), None);
    }
}
