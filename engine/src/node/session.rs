//! The only place a query's DataFusion session is built: the scene's
//! datasets and visible columns, masks and consent at every scan (the
//! policy rewrite first among the analyzer rules, hardening after type
//! coercion), the memory pool, and the approved UDFs.

use super::*;

impl Node {
    /// A fresh session for one query: only the scene's datasets and columns,
    /// the policy rewrite as the first analyzer rule, memory pool and limits.
    pub(super) fn session(
        &self,
        scene: &Scene,
        udfs: &QueryUdfs,
        datasets: &[String],
        consent: Option<&crate::consent::ConsentSet>,
    ) -> Result<(datafusion::execution::SessionState, Arc<PolicyRewrite>)> {
        let pseudonym_key = self
            .keys
            .master
            .derive(format!("kexin/pseudonym/v1/{}", scene.name).as_bytes());
        let mut rewrites = HashMap::new();
        let mut providers = Vec::new();
        for dname in datasets {
            let ds = self
                .space
                .datasets
                .get(dname)
                .ok_or_else(|| Error::internal("scene names a missing dataset"))?;
            let table = self
                .tables
                .get(dname)
                .ok_or_else(|| Error::internal("dataset not opened"))?;
            let (url, file_schema) = (&table.url, &table.schema);
            let fields: Vec<_> = file_schema
                .fields()
                .iter()
                .filter(|f| ds.columns.contains_key(f.name()) && scene.column_visible(ds, f.name()))
                .cloned()
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let mut masks = HashMap::new();
            for f in schema.fields() {
                let Some(c) = ds.columns.get(f.name()) else {
                    continue;
                };
                let key =
                    (c.mask == crate::mask::MaskKind::Pseudonym).then(|| pseudonym_key.clone());
                let m = ColumnMask::new(c.mask, c.bounds, key);
                if !m.is_identity() {
                    masks.insert(c.name.clone(), m.into_udf());
                }
            }
            // A loaded copy is also registered with its ordinal column, for
            // the rewrite's scan only: SQL plans against `schema`, which
            // does not have it.
            let with_ordinals = match table.sha256 {
                Some(_) => {
                    let ordinal = file_schema
                        .field_with_name(crate::policy::ORDINAL_COLUMN)
                        .map_err(|_| Error::internal("loaded copy without ordinals"))?;
                    let mut fields = schema.fields().to_vec();
                    fields.push(Arc::new(ordinal.clone()));
                    let config = ListingTableConfig::new(url.clone())
                        .with_listing_options(listing_options())
                        .with_schema(Arc::new(Schema::new(fields)));
                    let full = ListingTable::try_new(config).map_err(Error::internal)?;
                    Some(datafusion::datasource::provider_as_source(Arc::new(full)))
                }
                None => None,
            };
            rewrites.insert(
                dname.clone(),
                TableRewrite {
                    person_key: ds.person_key.clone(),
                    masks,
                    consent: consent.map(|c| c.clone().into_udf(ds.person_key_scheme)),
                    with_ordinals,
                },
            );
            let config = ListingTableConfig::new(url.clone())
                .with_listing_options(listing_options())
                .with_schema(schema);
            let table = ListingTable::try_new(config).map_err(Error::internal)?;
            providers.push((dname.clone(), Arc::new(table)));
        }
        let rule = Arc::new(PolicyRewrite::new(rewrites));
        let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![rule.clone()];
        rules.extend(Analyzer::new().rules);
        // Casts that type coercion inserted fail on data like any other:
        // harden once more after it, and coerce the guards it adds.
        rules.push(Arc::new(Harden));
        rules.push(Arc::new(TypeCoercion::new()));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.space.limits.memory_mb * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(Error::internal)?;
        let config = SessionConfig::new().with_information_schema(false);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_analyzer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        // A UDF may not shadow a built-in function: the checks above reason
        // about built-ins by name.
        for name in udfs.facts.keys() {
            if builtin_function(&ctx.state(), name) {
                return Err(refusal(
                    Code::UdfManifest,
                    "a UDF module declares a function with a built-in function's name",
                ));
            }
        }
        for f in &udfs.scalars {
            ctx.register_udf(f.clone());
        }
        for f in &udfs.aggregates {
            ctx.register_udaf(f.clone());
        }
        for (name, table) in providers {
            ctx.register_table(name.as_str(), table)
                .map_err(Error::internal)?;
        }
        Ok((ctx.state(), rule))
    }
}
