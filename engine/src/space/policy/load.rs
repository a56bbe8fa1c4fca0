//! Loading `space.toml`: [`Space::load`] and [`Space::parse`] read one
//! section at a time (`Sections`: `space`, `limits`, `members`, `datasets`,
//! `scenes` in `scenes.rs`, `privacy`), with the same checks in the same
//! order, then the checks across sections.

use super::raw::*;
use super::*;

/// `space.toml` read one section at a time; `file` names it in errors.
pub(super) struct Sections<'a> {
    pub(super) file: &'a str,
}

impl Sections<'_> {
    /// `[space]`: the name and the nodes.
    fn space(&self, space: &RawSpace) -> Result<String> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let name = space.name.trim().to_string();
        if name.is_empty() {
            return Err(err("space.name".into(), "must not be empty".into()));
        }
        if space.nodes.is_empty() {
            return Err(err("space.nodes".into(), "list at least one node".into()));
        }
        for n in &space.nodes {
            if !valid_name(n) {
                return Err(err(
                    "space.nodes".into(),
                    format!("node name {n:?} must be 1-32 of [a-z0-9_-]"),
                ));
            }
        }
        Ok(name)
    }

    /// `[limits]`, each within its range.
    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut limits = Limits::default();
        if let Some(l) = raw {
            if let Some(v) = l.max_sql_bytes {
                if !(64..=1 << 20).contains(&v) {
                    return Err(err(
                        "limits.max_sql_bytes".into(),
                        "must be 64..=1048576".into(),
                    ));
                }
                limits.max_sql_bytes = v;
            }
            if let Some(v) = l.max_sql_depth {
                if !(4..=200).contains(&v) {
                    return Err(err("limits.max_sql_depth".into(), "must be 4..=200".into()));
                }
                limits.max_sql_depth = v;
            }
            if let Some(v) = l.max_expr_depth {
                if !(8..=1024).contains(&v) {
                    return Err(err(
                        "limits.max_expr_depth".into(),
                        "must be 8..=1024".into(),
                    ));
                }
                limits.max_expr_depth = v;
            }
            if let Some(v) = l.timeout_seconds {
                if !(1..=86_400).contains(&v) {
                    return Err(err(
                        "limits.timeout_seconds".into(),
                        "must be 1..=86400".into(),
                    ));
                }
                limits.timeout_seconds = v;
            }
            if let Some(v) = l.memory_mb {
                if !(64..=1 << 20).contains(&v) {
                    return Err(err(
                        "limits.memory_mb".into(),
                        "must be 64..=1048576".into(),
                    ));
                }
                limits.memory_mb = v;
            }
            if let Some(v) = l.response_quantum_ms {
                if v > 60_000 {
                    return Err(err(
                        "limits.response_quantum_ms".into(),
                        "must be 0..=60000".into(),
                    ));
                }
                limits.response_quantum_ms = v;
            }
            if let Some(v) = l.queries_per_minute {
                if v > 60_000 {
                    return Err(err(
                        "limits.queries_per_minute".into(),
                        "must be 0..=60000".into(),
                    ));
                }
                limits.queries_per_minute = v;
            }
        }
        Ok(limits)
    }

    /// `[member.*]`: names, roles, the nodes they act for, jurisdictions.
    fn members(
        &self,
        raw: BTreeMap<String, RawMember>,
        nodes: &[String],
    ) -> Result<BTreeMap<String, Member>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut members = BTreeMap::new();
        for (mname, m) in raw {
            if !valid_name(&mname) {
                return Err(err(
                    format!("member.{mname}"),
                    "member name must be 1-32 of [a-z0-9_-]".into(),
                ));
            }
            let Some(role) = crate::identity::Role::parse(&m.role) else {
                return Err(err(
                    format!("member.{mname}.role"),
                    format!(
                        "unknown role {:?} (expected researcher, holder, operator, individual or node)",
                        m.role
                    ),
                ));
            };
            for n in &m.nodes {
                if !nodes.contains(n) {
                    return Err(err(
                        format!("member.{mname}.nodes"),
                        format!("{n:?} is not a node of the space"),
                    ));
                }
            }
            if let Some(j) = &m.jurisdiction
                && !iso3166(j)
            {
                return Err(err(
                    format!("member.{mname}.jurisdiction"),
                    "expected a two-letter ISO 3166 code such as CN or HK".into(),
                ));
            }
            members.insert(
                mname.clone(),
                Member {
                    name: mname,
                    role,
                    org: m.org,
                    nodes: m.nodes,
                    jurisdiction: m.jurisdiction,
                },
            );
        }
        Ok(members)
    }

    /// `[dataset.*]`: sources, person keys, and every column's policy.
    fn datasets(&self, raw: BTreeMap<String, RawDataset>) -> Result<BTreeMap<String, Dataset>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut datasets = BTreeMap::new();
        for (dname, d) in raw {
            let at = |f: &str| format!("dataset.{dname}.{f}");
            if !valid_name(&dname) {
                return Err(err(
                    format!("dataset.{dname}"),
                    "dataset name must be 1-32 of [a-z0-9_]".into(),
                ));
            }
            if d.source.trim().is_empty() {
                return Err(err(at("source"), "must not be empty".into()));
            }
            if Path::new(&d.source).is_absolute() || d.source.contains("..") {
                return Err(err(
                    at("source"),
                    "must be a relative path inside the space".into(),
                ));
            }
            let person_key_scheme = match &d.person_key_scheme {
                None => PersonKeyScheme::NationalId,
                Some(s) => PersonKeyScheme::parse(s).ok_or_else(|| {
                    err(
                        at("person_key_scheme"),
                        "must be \"national-id\", \"hospital-record\" or \"token\"".into(),
                    )
                })?,
            };
            let mut columns = BTreeMap::new();
            for (cname, c) in d.columns {
                let cat = |f: &str| format!("dataset.{dname}.columns.{cname}.{f}");
                if !valid_name(&cname) {
                    return Err(err(
                        cat("name"),
                        "column name must be 1-32 of [a-z0-9_]".into(),
                    ));
                }
                if cname.starts_with("__") {
                    return Err(err(
                        cat("name"),
                        "column names starting with \"__\" are reserved for kexin".into(),
                    ));
                }
                let grade = Grade::new(c.grade)
                    .ok_or_else(|| err(cat("grade"), "must be 1, 2, 3 or 4".into()))?;
                let kind = c.kind.unwrap_or(grade.minimum_kind());
                if kind < grade.minimum_kind() {
                    return Err(err(
                        cat("kind"),
                        format!(
                            "{kind:?} is less strict than grade {}'s default {:?}; a column may only be stricter than its grade",
                            grade.get(),
                            grade.minimum_kind()
                        ),
                    ));
                }
                let mask = match &c.mask {
                    Some(m) => MaskKind::parse(m).map_err(|reason| err(cat("mask"), reason))?,
                    None => MaskKind::None,
                };
                match kind {
                    ColumnKind::Identifier if !mask.hides_identity() => {
                        return Err(err(
                            cat("mask"),
                            "identifier columns need mask \"pseudonym\", \"redact\" or \"partial(a,b)\"".into(),
                        ));
                    }
                    ColumnKind::Quasi if !mask.generalizes() => {
                        return Err(err(
                            cat("mask"),
                            "quasi-identifiers need a generalizing mask: band(n), prefix(n), month or year".into(),
                        ));
                    }
                    _ => {}
                }
                let bounds = match c.bounds {
                    Some([lo, hi]) => {
                        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                            return Err(err(
                                cat("bounds"),
                                "need two finite numbers with lower < upper".into(),
                            ));
                        }
                        Some((lo, hi))
                    }
                    None => None,
                };
                if let Some(values) = &c.domain {
                    let distinct: BTreeSet<&PublicValue> = values.iter().collect();
                    let one_type = values.iter().all(|v| matches!(v, PublicValue::Int(_)))
                        || values.iter().all(|v| matches!(v, PublicValue::Text(_)));
                    if values.is_empty()
                        || values.len() > MAX_DOMAIN_VALUES
                        || distinct.len() != values.len()
                        || !one_type
                    {
                        return Err(err(
                            cat("domain"),
                            format!(
                                "need 1..={MAX_DOMAIN_VALUES} distinct values, all integers or all strings"
                            ),
                        ));
                    }
                    if kind == ColumnKind::Identifier {
                        return Err(err(
                            cat("domain"),
                            "identifier columns cannot have a public domain".into(),
                        ));
                    }
                }
                let declared_type = match &c.value_type {
                    None => None,
                    Some(t) => {
                        let t = ValueType::parse(t).ok_or_else(|| {
                            err(
                                cat("type"),
                                "must be \"integer\", \"float\", \"text\", \"date\" or \"boolean\""
                                    .into(),
                            )
                        })?;
                        mask.check_type(&t.arrow(), bounds.is_some())
                            .map_err(|reason| err(cat("type"), reason))?;
                        Some(t)
                    }
                };
                columns.insert(
                    cname.clone(),
                    ColumnPolicy {
                        name: cname,
                        grade,
                        kind,
                        mask,
                        bounds,
                        domain: c.domain.clone(),
                        declared_type,
                    },
                );
            }
            match columns.get(&d.person_key) {
                None => {
                    return Err(err(
                        at("person_key"),
                        format!("{:?} is not a column of the dataset", d.person_key),
                    ));
                }
                Some(c) if c.kind != ColumnKind::Identifier || c.mask != MaskKind::Pseudonym => {
                    return Err(err(
                        at("person_key"),
                        "the person key must be an identifier column with mask \"pseudonym\""
                            .into(),
                    ));
                }
                Some(_) => {}
            }
            datasets.insert(
                dname.clone(),
                Dataset {
                    name: dname,
                    source: d.source,
                    person_key: d.person_key,
                    person_key_scheme,
                    one_row_per_person: d.one_row_per_person,
                    columns,
                },
            );
        }
        Ok(datasets)
    }

    /// `[privacy]`: the budget per requester organisation.
    fn privacy(&self, raw: Option<RawSpacePrivacy>) -> Result<Option<f64>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let epsilon_per_requester = match raw {
            None => None,
            Some(p)
                if p.epsilon_per_requester.is_finite()
                    && (1e-4..=100.0).contains(&p.epsilon_per_requester) =>
            {
                Some(p.epsilon_per_requester)
            }
            Some(_) => {
                return Err(err(
                    "privacy.epsilon_per_requester".into(),
                    "must be 0.0001..=100".into(),
                ));
            }
        };
        Ok(epsilon_per_requester)
    }
}

impl Space {
    /// Load `DIR/space.toml`.
    pub fn load(dir: &Path) -> Result<Space> {
        let path = dir.join("space.toml");
        let file = path.display().to_string();
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::config(&file, "(file)", format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::config(&file, "(file)", "not valid UTF-8"))?;
        Self::parse(dir, &file, text, Sha256::digest(&bytes).into())
    }

    /// Parse and validate policy text. `file` is only used in error messages.
    pub fn parse(dir: &Path, file: &str, text: &str, policy_digest: [u8; 32]) -> Result<Space> {
        let raw: RawSpaceFile = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(document)".into());
            Error::config(file, field, e.message().to_string())
        })?;
        let err = |field: String, reason: String| Error::config(file, field, reason);
        let sections = Sections { file };
        let name = sections.space(&raw.space)?;
        let limits = sections.limits(raw.limits)?;
        let members = sections.members(raw.member, &raw.space.nodes)?;
        let datasets = sections.datasets(raw.dataset)?;
        let scenes = sections.scenes(raw.scene, &datasets, &raw.space.nodes)?;
        let operator_key = match &raw.space.operator_key {
            None => None,
            Some(k) => Some(crate::identity::parse_public_key(k).ok_or_else(|| {
                err(
                    "space.operator_key".into(),
                    "expected a hex-encoded ed25519 public key".into(),
                )
            })?),
        };
        let jurisdiction = raw.space.jurisdiction.unwrap_or_else(|| "CN".into());
        if !iso3166(&jurisdiction) {
            return Err(err(
                "space.jurisdiction".into(),
                "expected a two-letter ISO 3166 code such as CN".into(),
            ));
        }
        for d in &raw.space.export_negative_list {
            if !datasets.contains_key(d) {
                return Err(err(
                    "space.export_negative_list".into(),
                    format!("{d:?} is not a dataset"),
                ));
            }
        }
        let epsilon_per_requester = sections.privacy(raw.privacy)?;
        exact_beside_dp(&scenes, &datasets).map_err(|(f, r)| err(f, r))?;
        Ok(Space {
            dir: dir.to_path_buf(),
            name,
            operator_key,
            epsilon_per_requester,
            jurisdiction,
            export_negative_list: raw.space.export_negative_list,
            nodes: raw.space.nodes,
            datasets,
            scenes,
            members,
            limits,
            policy_digest,
        })
    }

    pub fn default_node(&self) -> &str {
        // `parse` guarantees at least one node.
        self.nodes.first().map(String::as_str).unwrap_or("h1")
    }
}

/// A requester with a DP scene may not also hold an exact scene over any
/// of the same columns: the exact answers would return what the DP
/// scene's budget protects. (The person key does not count: it is never
/// released.) Returns the field and reason of the first conflict.
pub(super) fn exact_beside_dp(
    scenes: &BTreeMap<String, Scene>,
    datasets: &BTreeMap<String, Dataset>,
) -> std::result::Result<(), (String, String)> {
    let visible = |s: &Scene| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for d in s.datasets.iter().filter_map(|d| datasets.get(d)) {
            for c in d.columns.keys() {
                if *c != d.person_key && s.column_visible(d, c) {
                    out.insert(format!("{}.{c}", d.name));
                }
            }
        }
        out
    };
    for dp in scenes.values().filter(|s| s.privacy.is_some()) {
        let protected = visible(dp);
        for exact in scenes
            .values()
            .filter(|s| s.privacy.is_none() && s.requester == dp.requester)
        {
            let exact_columns = visible(exact);
            let shared: Vec<&str> = exact_columns
                .intersection(&protected)
                .map(String::as_str)
                .take(3)
                .collect();
            if !shared.is_empty() {
                return Err((
                    format!("scene.{}", exact.name),
                    format!(
                        "requester {} also has the DP scene {} over the same columns ({}): exact answers here would return what that scene's privacy budget protects; give the scenes different requesters or disjoint columns",
                        exact.requester,
                        dp.name,
                        shared.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(super) fn iso3166(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

pub(super) fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    matches!((num(0..4), num(5..7), num(8..10)), (Some(_), Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d))
}
