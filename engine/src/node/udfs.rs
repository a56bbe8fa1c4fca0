//! UDF administration on a node: registering an approved module for a
//! scene (content store and audit record together), listing approvals,
//! and loading a scene's modules for a query.

use super::*;
use crate::closed::closed_set;
use crate::identity::{Signed, UdfApprovalBody, tag};

/// The result of registering a UDF module on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub node: String,
    pub scene: String,
    pub digest: String,
    pub functions: Vec<kexin_sandbox::Function>,
    /// False when the module was already approved for the scene here.
    pub newly_approved: bool,
    pub audit_seq: u64,
}

closed_set! {
    /// Where a module's approval comes from.
    UdfSource {
        /// Listed in `space.toml`.
        Policy => "policy",
        /// Approved by a data holder (or the operator) of the node.
        Registered => "registered",
    }
}

/// One approved module as `kexin udf list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedUdf {
    pub node: String,
    pub scene: String,
    pub digest: String,
    pub source: UdfSource,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub functions: Vec<kexin_sandbox::Function>,
    /// Whether the module file is present and matches its digest.
    pub loadable: bool,
}

impl Node {
    /// Every module approved for `scene` on this node: the policy's digests
    /// and the data holder's registrations, each loaded from the content
    /// store and checked against its digest.
    pub(super) fn scene_modules(&self, scene: &Scene) -> Result<Vec<kexin_sandbox::Module>> {
        let mut digests: Vec<String> = scene.udfs.clone();
        for a in self.approvals(Some(&scene.name))? {
            if !digests.contains(&a.digest) {
                digests.push(a.digest);
            }
        }
        digests
            .iter()
            .map(|d| self.udfs.load_approved(&self.space.dir, d))
            .collect()
    }

    pub(super) fn approvals(&self, scene: Option<&str>) -> Result<Vec<UdfApproval>> {
        self.store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))?
            .udf_approvals(scene)
    }

    /// A data holder approves a module for a scene on this node: the module
    /// is checked (limits, imports, manifest, export types), its function
    /// names must not shadow built-ins or the scene's other modules, its
    /// bytes go to the space's content store, and the approval and its
    /// audit record commit together.
    /// Approve a module for a scene on this node, as `env` signs it: the
    /// signer is a data holder of this node or the space's operator, and
    /// signed the module's digest for this space, node and scene. Refusals
    /// are audited.
    pub fn approve_udf(&self, env: &Signed<UdfApprovalBody>, bytes: &[u8]) -> Result<Registration> {
        let a = &env.body;
        let r = self.approve_checked(env, bytes);
        self.audit_refusal(r, &a.member, &a.scene, Kind::UdfRegister, None)
    }

    fn approve_checked(&self, env: &Signed<UdfApprovalBody>, bytes: &[u8]) -> Result<Registration> {
        let a = &env.body;
        if a.space != self.space.name || a.node != self.name {
            return Err(refusal(
                Code::Auth,
                "the approval is for another space or node",
            ));
        }
        if hex::encode(sha2::Sha256::digest(bytes)) != a.module_sha256 {
            return Err(refusal(Code::Auth, "the signed digest is not the module's"));
        }
        let operator = self.operator(&a.member);
        if !(operator || self.holder_here(&a.member)) {
            return Err(refusal(
                Code::Auth,
                "UDF modules are approved by a data holder of this node or the space's operator",
            ));
        }
        self.check_signed(env, tag::UDF, &a.member, &a.nonce, &a.time, Code::Auth)?;
        self.register_udf(&a.scene, bytes, &a.member)
    }

    /// A researcher's module on a mock twin: checked exactly as a data
    /// holder's approval checks it (limits, imports, manifest, export
    /// types, names), then usable under `scene` on the twin only.
    pub fn twin_udf(&self, scene: &str, bytes: &[u8]) -> Result<Registration> {
        if !self.mock {
            return Err(refusal(
                Code::Auth,
                "modules are approved without a signature only on a mock twin",
            ));
        }
        self.register_udf(scene, bytes, "operator")
    }

    /// Approve a module once the approval was checked.
    fn register_udf(&self, scene: &str, bytes: &[u8], by: &str) -> Result<Registration> {
        let sc = self
            .space
            .scenes
            .get(scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        // Approvals come from the space operator or a data-holder member.
        if by != "operator"
            && self
                .space
                .members
                .get(by)
                .is_none_or(|m| m.role != Role::Holder)
        {
            return Err(Error::config(
                "space.toml",
                format!("member.{by}"),
                "UDF approvals need a member with role \"holder\" (or the operator)",
            ));
        }
        let module = self.udfs.load_bytes(bytes)?;
        let digest = module.digest().to_string();
        let functions = module.manifest().functions.clone();
        let existing = self.approvals(Some(scene))?;
        if let Some(a) = existing.iter().find(|a| a.digest == digest) {
            return Ok(Registration {
                node: self.name.clone(),
                scene: scene.to_string(),
                digest,
                functions,
                newly_approved: false,
                audit_seq: a.audit_seq,
            });
        }
        // Names must be unique across the scene's modules and must not shadow
        // DataFusion's functions.
        let mut others = self.scene_modules(sc).unwrap_or_default();
        others.retain(|m| m.digest() != digest);
        others.push(module.clone());
        let (state, _) = self.session(sc, &QueryUdfs::default(), &sc.datasets, None)?;
        QueryUdfs::bind(&others, sc.udf_limits)?;
        if functions.iter().any(|f| builtin_function(&state, &f.name)) {
            return Err(refusal(
                Code::UdfManifest,
                "a UDF module declares a function with a built-in function's name",
            ));
        }
        keep_module(crate::udf::module_path(&self.space.dir, &digest), bytes)?;
        let manifest = serde_json::to_string(module.manifest()).map_err(Error::internal)?;
        let now = now_utc().1;
        let mut entry = self.governance_entry(by, scene, Kind::UdfRegister, Decision::Approved);
        entry.time = now.clone();
        entry.udfs = vec![digest.clone()];
        let (seq, _) = self
            .store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))?
            .append_with(entry, &self.keys, |tx, seq| {
                tx.execute(
                    "INSERT INTO udf_approval
                     (scene, digest, manifest, approved_by, approved_at, audit_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![scene, digest, manifest, by, now, seq as i64],
                )?;
                Ok(())
            })?;
        Ok(Registration {
            node: self.name.clone(),
            scene: scene.to_string(),
            digest,
            functions,
            newly_approved: true,
            audit_seq: seq,
        })
    }

    /// Approved modules on this node, optionally for one scene.
    pub fn list_udfs(&self, scene: Option<&str>) -> Result<Vec<ListedUdf>> {
        let mut out = Vec::new();
        for sc in self.space.scenes.values() {
            if scene.is_some_and(|s| s != sc.name) {
                continue;
            }
            let mut seen = Vec::new();
            for d in &sc.udfs {
                seen.push(d.clone());
                out.push(self.listed(sc, d, UdfSource::Policy, None));
            }
            for a in self.approvals(Some(&sc.name))? {
                if seen.contains(&a.digest) {
                    continue;
                }
                let d = a.digest.clone();
                out.push(self.listed(sc, &d, UdfSource::Registered, Some(a)));
            }
        }
        Ok(out)
    }

    pub(super) fn listed(
        &self,
        sc: &Scene,
        digest: &str,
        source: UdfSource,
        approval: Option<UdfApproval>,
    ) -> ListedUdf {
        let module = self.udfs.load_approved(&self.space.dir, digest).ok();
        ListedUdf {
            node: self.name.clone(),
            scene: sc.name.clone(),
            digest: digest.to_string(),
            source,
            approved_by: approval.as_ref().map(|a| a.approved_by.clone()),
            approved_at: approval.as_ref().map(|a| a.approved_at.clone()),
            functions: module
                .as_ref()
                .map(|m| m.manifest().functions.clone())
                .unwrap_or_default(),
            loadable: module.is_some(),
        }
    }
}

/// Write a module's bytes to `path` (its digest's place), durably: a
/// private temporary file, synced, renamed into place.
fn keep_module(path: Option<PathBuf>, bytes: &[u8]) -> Result<()> {
    let path = path.ok_or_else(|| Error::internal("digest without a path"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// A module a researcher submitted for a scene on this node, waiting for
/// (or given) a data holder's approval: what `kexin udf pending` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub node: String,
    pub scene: String,
    pub digest: String,
    /// The functions its manifest declares, with their types.
    pub functions: Vec<kexin_sandbox::Function>,
    pub submitted_by: String,
    pub submitted_at: String,
    pub audit_seq: u64,
    /// Whether the module is approved for the scene now.
    pub approved: bool,
}

/// A submission refused because the module is not one submitted for the
/// scene.
const NOT_SUBMITTED: Refusal = Refusal::new(
    Code::UdfModule,
    "no module with that digest was submitted for the scene on this node",
);

impl Node {
    /// Where a submitted module's bytes wait for review: the node's own
    /// folder, apart from the space's store of approved modules.
    /// `digest` is the module's digest as listed (`sha256:<hex>`) or its
    /// bare hex, as an approval signs it.
    fn submitted_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| {
            self.space
                .dir
                .join(&self.name)
                .join("udf-submitted")
                .join(format!("{hex}.wasm"))
        })
    }

    /// A researcher submits a module for a scene on this node, for its data
    /// holders to review: the module is checked as an approval checks it
    /// (limits, imports, manifest), kept in the node's folder, and recorded
    /// with its audit entry. Refusals are audited.
    pub fn submit_udf(
        &self,
        env: &Signed<crate::identity::UdfSubmissionBody>,
        bytes: &[u8],
    ) -> Result<Submission> {
        let a = &env.body;
        let r = self.submit_checked(env, bytes);
        self.audit_refusal(r, &a.member, &a.scene, Kind::UdfSubmit, None)
    }

    fn submit_checked(
        &self,
        env: &Signed<crate::identity::UdfSubmissionBody>,
        bytes: &[u8],
    ) -> Result<Submission> {
        let a = &env.body;
        if a.space != self.space.name || a.node != self.name {
            return Err(refusal(
                Code::Auth,
                "the submission is for another space or node",
            ));
        }
        if hex::encode(sha2::Sha256::digest(bytes)) != a.module_sha256 {
            return Err(refusal(Code::Auth, "the signed digest is not the module's"));
        }
        let sc = self
            .space
            .scenes
            .get(&a.scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        let researcher_of_scene = self
            .space
            .members
            .get(&a.member)
            .is_some_and(|m| m.role == Role::Researcher && m.org == sc.requester);
        if !researcher_of_scene {
            return Err(refusal(
                Code::Auth,
                "modules are submitted by researchers of the scene's requester",
            ));
        }
        self.check_signed(
            env,
            tag::UDF_SUBMIT,
            &a.member,
            &a.nonce,
            &a.time,
            Code::Auth,
        )?;
        let module = self.udfs.load_bytes(bytes)?;
        let digest = module.digest().to_string();
        if let Some(s) = self
            .udf_submissions(&a.member, Some(&a.scene))?
            .into_iter()
            .find(|s| s.digest == digest)
        {
            return Ok(s);
        }
        keep_module(self.submitted_path(&digest), bytes)?;
        let manifest = serde_json::to_string(module.manifest()).map_err(Error::internal)?;
        let now = now_utc().1;
        let mut entry =
            self.governance_entry(&a.member, &a.scene, Kind::UdfSubmit, Decision::Recorded);
        entry.time = now.clone();
        entry.udfs = vec![digest.clone()];
        let (seq, _) = self
            .store_lock()?
            .append_with(entry, &self.keys, |tx, seq| {
                tx.execute(
                    "INSERT INTO udf_submission
                 (scene, digest, manifest, submitted_by, submitted_at, audit_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![a.scene, digest, manifest, a.member, now, seq as i64],
                )?;
                Ok(())
            })?;
        Ok(Submission {
            node: self.name.clone(),
            scene: a.scene.clone(),
            digest,
            functions: module.manifest().functions.clone(),
            submitted_by: a.member.clone(),
            submitted_at: now,
            audit_seq: seq,
            approved: false,
        })
    }

    /// The modules submitted on this node (for one scene), oldest first:
    /// all of them for its data holders and the operator, a researcher's
    /// own for a researcher.
    pub fn udf_submissions(&self, member: &str, scene: Option<&str>) -> Result<Vec<Submission>> {
        let reviewer = self.operator(member) || self.holder_here(member);
        let mut all = self.submissions(scene)?;
        all.retain(|s| reviewer || s.submitted_by == member);
        Ok(all)
    }

    /// Every module submitted on this node (for one scene), oldest first.
    fn submissions(&self, scene: Option<&str>) -> Result<Vec<Submission>> {
        let rows: Vec<(String, String, String, String, String, i64)> = {
            let store = self.store_lock()?;
            let mut stmt = store.conn.prepare(
                "SELECT scene, digest, manifest, submitted_by, submitted_at, audit_seq
                 FROM udf_submission ORDER BY submitted_at, scene, digest",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (sc, digest, manifest, by, at, seq) in rows {
            if scene.is_some_and(|s| s != sc) {
                continue;
            }
            let manifest: kexin_sandbox::Manifest = serde_json::from_str(&manifest)
                .map_err(|_| Error::internal("a stored manifest does not parse"))?;
            let approved = self
                .space
                .scenes
                .get(&sc)
                .is_some_and(|s| s.udfs.contains(&digest))
                || self
                    .approvals(Some(&sc))?
                    .iter()
                    .any(|a| a.digest == digest);
            out.push(Submission {
                node: self.name.clone(),
                scene: sc,
                digest,
                functions: manifest.functions,
                submitted_by: by,
                submitted_at: at,
                audit_seq: seq as u64,
                approved,
            });
        }
        Ok(out)
    }

    /// A data holder (or the operator) approves a submitted module, as
    /// [`Node::approve_udf`] approves one it is given, with the bytes the
    /// researcher submitted. Refusals are audited.
    pub fn approve_submitted(&self, env: &Signed<UdfApprovalBody>) -> Result<Registration> {
        let a = &env.body;
        // Who may approve is the approval's own check (`approve_udf`).
        let submitted = self
            .submissions(Some(&a.scene))?
            .iter()
            .any(|s| s.digest.strip_prefix("sha256:") == Some(a.module_sha256.as_str()));
        let bytes = self
            .submitted_path(&a.module_sha256)
            .filter(|_| submitted)
            .and_then(|p| std::fs::read(p).ok());
        match bytes {
            Some(b) => self.approve_udf(env, &b),
            None => self.audit_refusal(
                Err(Error::Refused(NOT_SUBMITTED)),
                &a.member,
                &a.scene,
                Kind::UdfRegister,
                None,
            ),
        }
    }
}
