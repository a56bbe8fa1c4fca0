//! The members' side: key files, and building and signing what members send
//! (queries, certificates, consent receipts, contract actions, airlock
//! decisions). Also the example space's identities, grants and contracts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kexin_engine::airlock::{self, Decision};
use kexin_engine::consent::{self, ConsentReceipt};
use kexin_engine::contract::{self, Action, Terms};
use kexin_engine::dispute;
use kexin_engine::identity::{
    self, Certificate, IdCardNumber, QueryBody, Signed, UdfApprovalBody, load_key_file, nonce, tag,
};
use kexin_engine::node::Node;
use kexin_engine::policy::{ContractMode, Release, Space};
use kexin_engine::registry::Registry;
use kexin_engine::store::now_utc;

/// Where the example space keeps a member's key file.
pub fn key_path(space_dir: &Path, member: &str) -> PathBuf {
    space_dir.join("keys").join(format!("{member}.key"))
}

/// Load `member`'s signing key from `key` (default `<space>/keys/<member>.key`);
/// the file must be the member's.
pub fn load_key(space_dir: &Path, member: &str, key: Option<&Path>) -> Result<SigningKey> {
    let path = key.map_or_else(|| key_path(space_dir, member), Path::to_path_buf);
    let (owner, k) = load_key_file(&path)?;
    anyhow::ensure!(
        owner == member,
        "{} is {owner}'s key, not {member}'s",
        path.display()
    );
    Ok(k)
}

/// A researcher's signed query.
pub fn query(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    scene: &str,
    contract: Option<String>,
    sql: &str,
) -> Result<Signed<QueryBody>> {
    Ok(Signed::sign(
        tag::QUERY,
        QueryBody {
            space: space.name.clone(),
            node: node.into(),
            member: member.into(),
            scene: scene.into(),
            contract,
            sql: sql.into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// What the operator certifies about one member.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub member: &'a str,
    pub role: kexin_engine::identity::Role,
    pub org: &'a str,
    pub public_key: ed25519_dalek::VerifyingKey,
    pub id_number: Option<&'a IdCardNumber>,
    pub real_name_verified: bool,
    pub valid_to: &'a str,
}

/// A certificate signed with the operator's key.
pub fn certificate(
    space: &Space,
    registry: &Registry,
    operator: &SigningKey,
    i: &Issue<'_>,
) -> Result<Signed<Certificate>> {
    Ok(Signed::sign(
        tag::CERTIFICATE,
        Certificate {
            space: space.name.clone(),
            member: i.member.into(),
            role: i.role,
            org: i.org.into(),
            public_key: hex::encode(i.public_key.as_bytes()),
            real_name_verified: i.real_name_verified || i.id_number.is_some(),
            id_digest: i.id_number.map(|n| registry.id_digest(n)),
            issued_at: now_utc().1,
            valid_to: i.valid_to.into(),
        },
        operator,
    )?)
}

/// A person's signed grant or revocation for a scene. The purpose defaults
/// to the scene's.
#[allow(
    clippy::too_many_arguments,
    reason = "a consent receipt's fields, in the order the CLI takes them"
)]
pub fn receipt(
    space: &Space,
    person: &str,
    key: &SigningKey,
    scene: &str,
    action: consent::Verb,
    purpose: Option<&str>,
    modifiers: Vec<String>,
    until: Option<String>,
) -> Result<Signed<ConsentReceipt>> {
    let sc = space
        .scenes
        .get(scene)
        .with_context(|| format!("no scene {scene:?} in space.toml"))?;
    Ok(Signed::sign(
        tag::CONSENT,
        ConsentReceipt {
            space: space.name.clone(),
            person: person.into(),
            scene: scene.into(),
            action,
            purpose: purpose.map_or_else(|| sc.purpose_code.code(), str::to_string),
            modifiers,
            requester: sc.requester.clone(),
            until,
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// What a contract offer sets beyond its parties and scene. `None` takes
/// the scene's own (its datasets, release and last valid day).
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub datasets: Option<Vec<String>>,
    pub release: Option<Release>,
    pub max_queries: u64,
    pub epsilon: Option<f64>,
    pub valid_to: Option<String>,
    /// No query runs under the contract while a dispute over one of its
    /// audit entries is open.
    pub pause_on_dispute: bool,
    /// The value rule: what each released result is worth, split among
    /// the nodes whose data it used.
    pub fee_per_release: Option<u64>,
}

/// Contract terms offered by `holder` for `node`, signed.
pub fn offer(
    space: &Space,
    node: &str,
    holder: &str,
    key: &SigningKey,
    requester: &str,
    scene: &str,
    o: Offer,
) -> Result<Signed<Terms>> {
    let sc = space
        .scenes
        .get(scene)
        .with_context(|| format!("no scene {scene:?} in space.toml"))?;
    Ok(Signed::sign(
        tag::CONTRACT,
        Terms {
            space: space.name.clone(),
            node: node.into(),
            holder: holder.into(),
            requester: requester.into(),
            scene: scene.into(),
            datasets: o.datasets.unwrap_or_else(|| sc.datasets.clone()),
            release: o.release.unwrap_or(sc.release),
            max_queries: o.max_queries,
            epsilon: o.epsilon,
            valid_to: o.valid_to.unwrap_or_else(|| sc.valid_to.clone()),
            pause_on_dispute: o.pause_on_dispute,
            fee_per_release: o.fee_per_release,
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A signed contract action (`agree`, `finalize`, `terminate`).
pub fn contract_action(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    contract: &str,
    action: contract::Verb,
) -> Result<Signed<Action>> {
    Ok(Signed::sign(
        tag::CONTRACT,
        Action {
            space: space.name.clone(),
            node: node.into(),
            contract: contract.into(),
            action,
            member: member.into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A signed opening of a dispute over audit entry `seq` of `node`.
pub fn dispute_opening(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    seq: u64,
    reason: &str,
) -> Result<Signed<dispute::Opening>> {
    Ok(Signed::sign(
        tag::DISPUTE,
        dispute::Opening {
            space: space.name.clone(),
            node: node.into(),
            seq,
            member: member.into(),
            reason: reason.into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A signed resolution of dispute `id` on `node`.
pub fn dispute_resolution(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    id: u64,
    outcome: dispute::Outcome,
    note: &str,
) -> Result<Signed<dispute::Resolution>> {
    Ok(Signed::sign(
        tag::DISPUTE,
        dispute::Resolution {
            space: space.name.clone(),
            node: node.into(),
            dispute: id,
            member: member.into(),
            outcome,
            note: note.into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A signed approval of the module `bytes` for `scene` on `node`.
pub fn udf_approval(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    scene: &str,
    bytes: &[u8],
) -> Result<Signed<UdfApprovalBody>> {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(bytes));
    udf_approval_of(space, node, member, key, scene, &digest)
}

/// A researcher's signed submission of the module `bytes` for `scene` on
/// `node`, for its data holders to review.
pub fn udf_submission(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    scene: &str,
    bytes: &[u8],
) -> Result<Signed<identity::UdfSubmissionBody>> {
    use sha2::Digest;
    Ok(Signed::sign(
        tag::UDF_SUBMIT,
        identity::UdfSubmissionBody {
            space: space.name.clone(),
            node: node.into(),
            scene: scene.into(),
            member: member.into(),
            module_sha256: hex::encode(sha2::Sha256::digest(bytes)),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A data holder's signed binding of individual `person` to the person key
/// `person_key` (under `scheme`) of `node`. The key's keyed digest is
/// computed here, with the space's ID key (on the node's machine); the key
/// itself is not in the binding.
pub fn person_binding(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    person: &str,
    scheme: kexin_engine::policy::PersonKeyScheme,
    person_key: &str,
) -> Result<Signed<identity::PersonBindingBody>> {
    let id_key = kexin_engine::registry::id_key(&space.dir, false)?;
    let digest = kexin_engine::consent::person_digest(&id_key, scheme, person_key);
    Ok(Signed::sign(
        tag::PERSON_BINDING,
        identity::PersonBindingBody {
            space: space.name.clone(),
            node: node.into(),
            member: member.into(),
            person: person.into(),
            scheme: scheme.as_str().into(),
            person_digest: hex::encode(digest),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// A signed approval of the submitted module with digest `digest` (as
/// listed, `sha256:<hex>`, or its bare hex).
pub fn udf_approval_of(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    scene: &str,
    digest: &str,
) -> Result<Signed<UdfApprovalBody>> {
    Ok(Signed::sign(
        tag::UDF,
        UdfApprovalBody {
            space: space.name.clone(),
            node: node.into(),
            scene: scene.into(),
            member: member.into(),
            module_sha256: digest.strip_prefix("sha256:").unwrap_or(digest).into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// The `Kexin-Request` header of one call to `node`'s HTTP API: base64url
/// (no padding) of the signed [`identity::RequestBody`].
pub fn request_header(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest;
    let env = Signed::sign(
        tag::REQUEST,
        identity::RequestBody {
            space: space.name.clone(),
            node: node.into(),
            member: member.into(),
            method: method.into(),
            target: target.into(),
            body_sha256: hex::encode(sha2::Sha256::digest(body)),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&env)?))
}

/// A signed airlock decision over the held result's digest.
pub fn decision(
    space: &Space,
    node: &str,
    member: &str,
    key: &SigningKey,
    id: u64,
    action: airlock::Verb,
    output_sha256: &str,
) -> Result<Signed<Decision>> {
    Ok(Signed::sign(
        tag::REVIEW,
        Decision {
            space: space.name.clone(),
            node: node.into(),
            id,
            action,
            member: member.into(),
            output_sha256: output_sha256.into(),
            nonce: nonce()?,
            time: now_utc().1,
        },
        key,
    )?)
}

/// Certificates for every space.toml member, with key files under
/// `<space>/keys/` (members that already have a key file keep it).
pub fn issue_members(space: &Space, registry: &mut Registry, operator: &SigningKey) -> Result<()> {
    let mut certs = Vec::new();
    for m in space.members.values() {
        let path = key_path(&space.dir, &m.name);
        let public = if path.exists() {
            load_key(&space.dir, &m.name, None)?.verifying_key()
        } else {
            identity::new_key_file(&path, &m.name)?
        };
        certs.push(certificate(
            space,
            registry,
            operator,
            &Issue {
                member: &m.name,
                role: m.role,
                org: &m.org,
                public_key: public,
                id_number: None,
                real_name_verified: true,
                valid_to: "2030-12-31",
            },
        )?);
    }
    registry.issue_many(certs)?;
    Ok(())
}

/// What the example space's governance holds, for the generator's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExampleCounts {
    pub individuals: usize,
    pub grants: usize,
    pub revoked: usize,
    pub expired: usize,
    pub contracts: usize,
}

/// The example space's governance: the operator key (its public half goes
/// into space.toml before this runs), member certificates, individuals
/// bound to their ID numbers with grants for a realistic share of persons
/// (some later revoked, some expired), and an agreed contract per scene,
/// node and researcher.
///
/// `persons` are (ID number) of the generated patients. Individuals'
/// keys are random and discarded, except for the first three (`p00000` …
/// `p00002`), whose key files are written for the README's walk-through.
pub async fn example_governance(
    space: Arc<Space>,
    operator: &SigningKey,
    persons: &[String],
    seed: u64,
) -> Result<ExampleCounts> {
    use rand::{Rng, SeedableRng};
    let mut counts = ExampleCounts::default();
    let mut registry = Registry::open(Arc::clone(&space))?;
    issue_members(&space, &mut registry, operator)?;

    // Individuals: every person gets an identity; ~60% grant the consent
    // scenes, 1 in 12 of those later revokes and 1 in 12 granted only until
    // a day already past.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xC0_75E7);
    let consent_scenes: Vec<&str> = space
        .scenes
        .values()
        .filter(|s| s.consent == kexin_engine::policy::ConsentMode::Required)
        .map(|s| s.name.as_str())
        .collect();
    let mut certs = Vec::new();
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    // The generator draws ID numbers at random, so two synthetic persons
    // can share one: the first keeps it (an ID binds to one member only).
    let mut seen = std::collections::HashSet::new();
    for (i, id) in persons.iter().enumerate() {
        let Some(id) = IdCardNumber::parse(id) else {
            continue;
        };
        if !seen.insert(id.as_str().to_string()) {
            continue;
        }
        let name = format!("p{i:05}");
        let key = if i < 3 {
            let path = key_path(&space.dir, &name);
            if !path.exists() {
                identity::new_key_file(&path, &name)?;
            }
            load_key(&space.dir, &name, None)?
        } else {
            random_key()?
        };
        certs.push(individual(&space, &registry, operator, &name, &key, &id)?);
        counts.individuals += 1;
        // The walk-through persons start without grants.
        if i < 3 || rng.random::<f64>() >= 0.6 {
            continue;
        }
        let roll: f64 = rng.random();
        let until = (roll < 1.0 / 12.0).then(|| "2025-12-31".to_string());
        for scene in &consent_scenes {
            grants.push(receipt(
                &space,
                &name,
                &key,
                scene,
                consent::Verb::Grant,
                None,
                vec![],
                until.clone(),
            )?);
            if (1.0 / 12.0..2.0 / 12.0).contains(&roll) {
                revokes.push(receipt(
                    &space,
                    &name,
                    &key,
                    scene,
                    consent::Verb::Revoke,
                    None,
                    vec![],
                    None,
                )?);
            }
        }
        counts.grants += 1;
        counts.expired += usize::from(until.is_some());
        counts.revoked += usize::from((1.0 / 12.0..2.0 / 12.0).contains(&roll));
    }
    registry.issue_many(certs)?;
    registry.record_many(grants)?;
    registry.record_many(revokes)?;

    // Contracts: the node's first holder offers each researcher of the
    // scene's requester an agreed contract; the holder finalizes it.
    for n in &space.nodes {
        let Some(holder) = space
            .members
            .values()
            .find(|m| m.role == kexin_engine::identity::Role::Holder && m.nodes.contains(n))
        else {
            continue;
        };
        let hkey = load_key(&space.dir, &holder.name, None)?;
        let node = Node::open(Arc::clone(&space), n).await?;
        for sc in space.scenes.values() {
            if sc.contract == ContractMode::None {
                continue;
            }
            for r in space.members.values().filter(|m| {
                m.role == kexin_engine::identity::Role::Researcher && m.org == sc.requester
            }) {
                // Generating into an existing space keeps its contracts:
                // one active contract per researcher and scene.
                let exists = node.contracts()?.iter().any(|c| {
                    c.state.active() && c.terms.requester == r.name && c.terms.scene == sc.name
                });
                if exists {
                    continue;
                }
                let terms = offer(
                    &space,
                    n,
                    &holder.name,
                    &hkey,
                    &r.name,
                    &sc.name,
                    Offer {
                        max_queries: 100_000,
                        ..Default::default()
                    },
                )?;
                let c = node.contract_offer(&terms)?;
                let rkey = load_key(&space.dir, &r.name, None)?;
                node.contract_act(&contract_action(
                    &space,
                    n,
                    &r.name,
                    &rkey,
                    &c.id,
                    contract::Verb::Agree,
                )?)?;
                node.contract_act(&contract_action(
                    &space,
                    n,
                    &holder.name,
                    &hkey,
                    &c.id,
                    contract::Verb::Finalize,
                )?)?;
                counts.contracts += 1;
            }
        }
    }
    Ok(counts)
}

/// `n` simulated individuals (`w00000` …) for contribution demos and
/// tests: certified by the operator and bound to synthetic ID numbers of a
/// region the generated hospitals never use (110101, so they match no
/// patient), each with a grant for `scene`. Their keys stay in memory.
/// Node servers pin individuals when they start, so run this first.
pub fn simulated_contributors(
    space: &Arc<Space>,
    n: usize,
    scene: &str,
) -> Result<Vec<(String, SigningKey)>> {
    let operator = load_key(&space.dir, "operator", None)?;
    let mut registry = Registry::open(Arc::clone(space))?;
    let mut people = Vec::with_capacity(n);
    let mut certs = Vec::with_capacity(n);
    let mut grants = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("w{i:05}");
        let key = random_key()?;
        let first17 = format!("110101{:04}0101{:03}", 1950 + i / 1000, i % 1000);
        let check = identity::gb11643_check(&first17)
            .ok_or_else(|| anyhow::anyhow!("ID number check digit"))?;
        let id = IdCardNumber::parse(&format!("{first17}{check}"))
            .ok_or_else(|| anyhow::anyhow!("synthetic ID number"))?;
        certs.push(individual(space, &registry, &operator, &name, &key, &id)?);
        grants.push(receipt(
            space,
            &name,
            &key,
            scene,
            consent::Verb::Grant,
            None,
            vec![],
            None,
        )?);
        people.push((name, key));
    }
    registry.issue_many(certs)?;
    registry.record_many(grants)?;
    Ok(people)
}

/// A key the example space does not keep (synthetic individuals).
fn random_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The example space's certificate of an individual bound to `id`.
fn individual(
    space: &Space,
    registry: &Registry,
    operator: &SigningKey,
    name: &str,
    key: &SigningKey,
    id: &IdCardNumber,
) -> Result<Signed<Certificate>> {
    certificate(
        space,
        registry,
        operator,
        &Issue {
            member: name,
            role: kexin_engine::identity::Role::Individual,
            org: "",
            public_key: key.verifying_key(),
            id_number: Some(id),
            real_name_verified: true,
            valid_to: "2030-12-31",
        },
    )
}
