//! Member identities: ed25519 key files, operator-issued certificates, and
//! signed envelopes for everything a member asks a node or the registry to do.
//!
//! - A **key file** holds one member's signing seed (mode 0600; loading a
//!   group- or world-readable key file is refused).
//! - A **certificate** binds a member name, role, organisation and public key
//!   (and, for individuals, a keyed digest of a verified GB 11643 ID number).
//!   The space operator signs it; `space.toml` pins the operator's public key
//!   (`space.operator_key`), so a certificate verifies offline.
//! - A **signed envelope** ([`Signed`]) carries a body and an ed25519
//!   signature over a domain tag plus the body's JSON. The tag keeps a
//!   signature for one purpose (a query, a consent receipt, a contract) from
//!   being accepted for another.
//!
//! Requests carry a random nonce and the signer's UTC time; the receiver
//! refuses a request outside [`FRESHNESS_SECONDS`] of its own clock and a
//! nonce it has seen (nodes keep the nonces durably for the window).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Code, Error, Result, refuse};

pub use crate::clock::{FRESHNESS_SECONDS, fresh, parse_time, valid_date};

/// The largest signed envelope a node parses (a query's SQL is limited
/// separately, and more tightly, by the space's limits).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kexin_key: u32,
    member: String,
    seed: String,
}

/// Create a new key file for `member` at `path` (mode 0600; an existing file
/// is never overwritten). Returns the public key.
pub fn new_key_file(path: &Path, member: &str) -> Result<VerifyingKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(Error::internal)?;
    write_key_file(path, member, &SigningKey::from_bytes(&seed))
}

/// Write `key` for `member` to a new file at `path` (mode 0600).
pub fn write_key_file(path: &Path, member: &str, key: &SigningKey) -> Result<VerifyingKey> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string(&KeyFile {
        kexin_key: 1,
        member: member.to_string(),
        seed: hex::encode(key.to_bytes()),
    })
    .map_err(Error::internal)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(key.verifying_key())
}

/// Load a key file: (member name, signing key). Refuses files that other
/// users can read.
pub fn load_key_file(path: &Path) -> Result<(String, SigningKey)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::internal(format!(
                "{} is readable by other users; run chmod 600 on it",
                path.display()
            )));
        }
    }
    let _ = meta;
    let text = std::fs::read_to_string(path)?;
    let kf: KeyFile = serde_json::from_str(&text)
        .map_err(|_| Error::internal(format!("{} is not a kexin key file", path.display())))?;
    let seed: [u8; 32] = hex::decode(&kf.seed)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::internal(format!("{} is not a kexin key file", path.display())))?;
    Ok((kf.member, SigningKey::from_bytes(&seed)))
}

/// Parse a hex-encoded ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A body with a detached ed25519 signature over `tag ‖ 0x00 ‖ JSON(body)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    pub body: T,
    /// Hex-encoded 64-byte signature.
    pub signature: String,
}

/// Domain tags: what a signature is for.
pub mod tag {
    pub const CERTIFICATE: &str = "kexin/certificate/v1";
    pub const QUERY: &str = "kexin/query-request/v1";
    pub const CONSENT: &str = "kexin/consent-receipt/v1";
    pub const CONTRACT: &str = "kexin/contract/v1";
    pub const REVIEW: &str = "kexin/airlock-decision/v1";
    pub const FEDERATE: &str = "kexin/federate-request/v1";
    pub const PSI: &str = "kexin/psi-request/v1";
    pub const CONTRIBUTE: &str = "kexin/contribution/v1";
    pub const COLLECT: &str = "kexin/collect-request/v1";
    pub const FHE_KEYS: &str = "kexin/fhe-keys/v1";
    pub const UDF: &str = "kexin/udf-approval/v1";
    pub const UDF_SUBMIT: &str = "kexin/udf-submission/v1";
    pub const REQUEST: &str = "kexin/request/v1";
    pub const PERSON_BINDING: &str = "kexin/person-binding/v1";
    /// A node's statement of its audit log's verifier key.
    pub const LOG_KEY: &str = "kexin/log-key/v1";
    /// Opening or resolving a dispute.
    pub const DISPUTE: &str = "kexin/dispute/v1";
    /// A node's accounting statement.
    pub const STATEMENT: &str = "kexin/statement/v1";
}

fn message<T: Serialize>(tag: &str, body: &T) -> Result<Vec<u8>> {
    let mut m = tag.as_bytes().to_vec();
    m.push(0);
    m.extend(serde_json::to_vec(body).map_err(Error::internal)?);
    Ok(m)
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    pub fn sign(tag: &str, body: T, key: &SigningKey) -> Result<Self> {
        let sig = key.sign(&message(tag, &body)?);
        Ok(Signed {
            body,
            signature: hex::encode(sig.to_bytes()),
        })
    }

    /// Check the signature; `Err` is a refusal with `code`.
    pub fn verify(&self, tag: &str, key: &VerifyingKey, code: Code) -> Result<()> {
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::refused(code, "the signature is malformed"))?;
        key.verify_strict(&message(tag, &self.body)?, &Signature::from_bytes(&bytes))
            .or_else(|_| refuse(code, "the signature does not verify"))?;
        Ok(())
    }

    /// Parse an envelope from untrusted JSON text, size-limited.
    pub fn from_json(text: &str, code: Code) -> Result<Self> {
        if text.len() > MAX_ENVELOPE_BYTES {
            return refuse(code, "the signed request is larger than the limit");
        }
        serde_json::from_str(text).or_else(|_| refuse(code, "the signed request is malformed"))
    }
}

/// A member's role: a closed set, written as the strings `space.toml`
/// and certificates have always used. A certificate naming any other role
/// does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Asks questions under scenes.
    Researcher,
    /// A data holder: offers contracts, registers UDFs, reviews held results.
    Holder,
    /// Runs the space: issues certificates.
    Operator,
    /// A person: consents and contributes.
    Individual,
    /// A node's own identity on the federation's links.
    Node,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Researcher,
        Role::Holder,
        Role::Operator,
        Role::Individual,
        Role::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Holder => "holder",
            Role::Operator => "operator",
            Role::Individual => "individual",
            Role::Node => "node",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator certifies about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub space: String,
    pub member: String,
    pub role: Role,
    pub org: String,
    pub public_key: String,
    /// The operator checked the member's real name (实名认证).
    pub real_name_verified: bool,
    /// Individuals: HMAC-SHA256 of the verified ID number under the space's
    /// ID key. Never the number itself.
    pub id_digest: Option<String>,
    pub issued_at: String,
    /// Last valid day (UTC, inclusive).
    pub valid_to: String,
}

impl Signed<Certificate> {
    /// Offline check: the operator's signature, the space, and the validity
    /// date. Returns the member's public key.
    pub fn check(&self, space: &str, operator: &VerifyingKey, today: &str) -> Result<VerifyingKey> {
        self.verify(tag::CERTIFICATE, operator, Code::Auth)?;
        if self.body.space != space {
            return refuse(Code::Auth, "the certificate is for another space");
        }
        if today > self.body.valid_to.as_str() {
            return refuse(Code::Auth, "the certificate has expired");
        }
        parse_public_key(&self.body.public_key)
            .ok_or_else(|| Error::refused(Code::Auth, "the certificate's key is malformed"))
    }
}

/// A researcher's query, signed with their key and bound to the space, the
/// node, the scene and the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    pub space: String,
    pub node: String,
    pub member: String,
    pub scene: String,
    pub contract: Option<String>,
    pub sql: String,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// The signer's UTC time, RFC 3339 with seconds.
    pub time: String,
}

/// A data holder's (or the operator's) approval of one WebAssembly module
/// for a scene on one node, signed over the module's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdfApprovalBody {
    pub space: String,
    pub node: String,
    pub scene: String,
    pub member: String,
    /// SHA-256 of the module's bytes, hex.
    pub module_sha256: String,
    pub nonce: String,
    pub time: String,
}

/// A data holder's signed statement that an individual member is the
/// person a person key of its node names (under a scheme other than an ID
/// number the operator certified, or in addition to it), signed under
/// [`tag::PERSON_BINDING`]. The key itself is not in it: only its keyed
/// digest (the consent module's `person_digest`), which the node's person
/// index is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonBindingBody {
    pub space: String,
    pub node: String,
    /// The data holder who binds.
    pub member: String,
    /// The individual member bound.
    pub person: String,
    /// The person-key scheme (`national-id`, `hospital-record`, `token`).
    pub scheme: String,
    /// The keyed digest of the person key under the scheme, hex.
    pub person_digest: String,
    pub nonce: String,
    pub time: String,
}

/// A researcher's signed submission of a WebAssembly module for a scene on
/// a node, for its data holders to review and approve (signed under
/// [`tag::UDF_SUBMIT`], never mistaken for an approval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdfSubmissionBody {
    pub space: String,
    pub node: String,
    pub scene: String,
    pub member: String,
    /// SHA-256 of the module's bytes, hex.
    pub module_sha256: String,
    pub nonce: String,
    pub time: String,
}

/// A member's signature over one call to a node's API (HTTP, or Flight
/// SQL): which node, which method and target, and the digest of the
/// request's body, fresh and single-use. It authenticates the caller as a
/// TLS client key does on a peer link; what the call asks for (a consent
/// receipt, a contract action) is signed separately, under its own tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub space: String,
    pub node: String,
    pub member: String,
    /// The HTTP method (`GET`, `POST`) or the Flight call's name.
    pub method: String,
    /// The path with its query string, exactly as sent (`/v1/consents?scene=s`).
    pub target: String,
    /// SHA-256 of the request's body bytes (of no bytes for a GET), hex.
    pub body_sha256: String,
    pub nonce: String,
    pub time: String,
}

/// A fresh random nonce (16 bytes, hex).
pub fn nonce() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(Error::internal)?;
    Ok(hex::encode(b))
}

/// GB 11643-1999 check character of the first 17 digits (ISO 7064 MOD 11-2).
pub fn gb11643_check(first17: &str) -> Option<char> {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0;
    for (c, w) in first17.chars().zip(W) {
        sum += c.to_digit(10)? * w;
    }
    Some(['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'][(sum % 11) as usize])
}

/// A validated GB 11643 citizen ID number: 17 digits, a valid birth date,
/// and the right check character (`x` is accepted as `X`).
#[derive(Clone, PartialEq, Eq)]
pub struct IdCardNumber(String);

impl IdCardNumber {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_uppercase();
        if s.len() != 18 || !s.is_ascii() {
            return None;
        }
        let (body, check) = s.split_at(17);
        let birth = format!("{}-{}-{}", &body[6..10], &body[10..12], &body[12..14]);
        (gb11643_check(body)? == check.chars().next()? && valid_date(&birth))
            .then_some(IdCardNumber(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for IdCardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdCardNumber(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_utc;

    /// Roles are written as the strings certificates always carried, and a
    /// certificate naming another role does not parse.
    #[test]
    fn roles_are_a_closed_set_written_as_before() {
        for r in Role::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
        let cert = |role: &str| {
            format!(
                r#"{{"space":"s","member":"m","role":"{role}","org":"o","public_key":"00","real_name_verified":true,"id_digest":null,"issued_at":"t","valid_to":"2099-01-01"}}"#
            )
        };
        assert!(serde_json::from_str::<Certificate>(&cert("holder")).is_ok());
        assert!(serde_json::from_str::<Certificate>(&cert("admin")).is_err());
    }

    #[test]
    fn signatures_bind_tag_and_body() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let s = Signed::sign(tag::QUERY, "hello".to_string(), &k).unwrap();
        assert!(s.verify(tag::QUERY, &k.verifying_key(), Code::Auth).is_ok());
        assert!(
            s.verify(tag::CONSENT, &k.verifying_key(), Code::Auth)
                .is_err()
        );
        assert!(
            s.verify(tag::QUERY, &other.verifying_key(), Code::Auth)
                .is_err()
        );
        let mut t = s.clone();
        t.body = "hellp".into();
        assert!(
            t.verify(tag::QUERY, &k.verifying_key(), Code::Auth)
                .is_err()
        );
        let mut u = s;
        u.signature = "00".into();
        assert!(
            u.verify(tag::QUERY, &k.verifying_key(), Code::Auth)
                .is_err()
        );
    }

    #[test]
    fn id_numbers_follow_gb11643() {
        // The standard's worked example.
        assert!(IdCardNumber::parse("11010519491231002X").is_some());
        assert!(IdCardNumber::parse("11010519491231002x").is_some());
        assert!(IdCardNumber::parse("110105194912310021").is_none());
        // Right check digit but 31 February.
        let body = "11010519490231002";
        let bad = format!("{body}{}", gb11643_check(body).unwrap());
        assert!(IdCardNumber::parse(&bad).is_none());
        assert!(!format!("{:?}", IdCardNumber::parse("11010519491231002X")).contains("1101"));
    }

    #[test]
    fn times_and_freshness() {
        assert_eq!(parse_time("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_time("1970-01-02 00:00:01"), None);
        assert!(fresh(&now_utc().1).is_ok());
        assert!(fresh("2020-01-01T00:00:00Z").is_err());
        assert!(valid_date("2024-02-29") && !valid_date("2023-02-29"));
    }

    #[test]
    fn key_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.key");
        let pk = new_key_file(&p, "alice").unwrap();
        let (m, k) = load_key_file(&p).unwrap();
        assert_eq!((m.as_str(), k.verifying_key()), ("alice", pk));
        assert!(new_key_file(&p, "alice").is_err(), "never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(load_key_file(&p).is_err());
        }
    }
}
