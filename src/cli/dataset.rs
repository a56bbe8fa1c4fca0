//! `kexin dataset add | list | show`: a data holder loads its own files
//! into its node (checked against `space.toml`, converted where the
//! declaration says, each row given its person ordinal) and sees what is
//! loaded, with the digest every later audit entry binds.
//!
//! These run on the node's own machine, on its folder: whoever can write
//! there runs the node. The acting member (`--as`) is recorded in the
//! `dataset-load` audit entry.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use kexin::Format;
use kexin_engine::identity::Role;
use kexin_engine::node::data::{self, Loaded};
use kexin_engine::policy::Space;

#[derive(Subcommand, Debug)]
pub enum DatasetAction {
    /// Check Parquet or CSV files (or folders of them) against the
    /// dataset's declared columns and load them as the node's copy. Nothing
    /// changes unless every row passes; a refusal names the file, row,
    /// column and rule, and exits with status 2.
    Add {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        dataset: String,
        /// Who loads: a data holder of the node, or the operator.
        #[arg(long = "as", default_value = "operator")]
        actor: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Files or folders; default: the dataset's declared `source`.
        files: Vec<PathBuf>,
    },
    /// What is loaded on a node: rows, persons and digest per dataset.
    List {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One dataset's load: columns and their types, conversions, files,
    /// dropped columns, digest and audit entry.
    Show {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        dataset: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// The exit status of input that `dataset add` refused.
const REFUSED: u8 = 2;

pub fn dataset(action: DatasetAction) -> Result<u8> {
    match action {
        DatasetAction::Add {
            space,
            node,
            dataset,
            actor,
            format,
            files,
        } => {
            let space = Space::load(&space)?;
            let may = actor == "operator"
                || space
                    .members
                    .get(&actor)
                    .is_some_and(|m| m.role == Role::Holder && m.nodes.contains(&node));
            if !may {
                bail!("{actor} is not a data holder of node {node} (nor the operator)");
            }
            let started = std::time::Instant::now();
            match data::load(&space, &node, &dataset, &files, &actor) {
                Ok(l) => {
                    if format == Format::Json {
                        println!("{}", serde_json::to_string(&l)?);
                    } else {
                        println!(
                            "node {node}: loaded {dataset}: {} rows, {} persons ({} new to the node's person index) in {:.1} s",
                            l.rows,
                            l.persons,
                            l.new_persons,
                            started.elapsed().as_secs_f64()
                        );
                        print_details(&l);
                    }
                    Ok(0)
                }
                Err(kexin_engine::Error::Config {
                    file,
                    field,
                    reason,
                }) => {
                    if format == Format::Json {
                        println!(
                            "{}",
                            serde_json::json!({"status": "refused", "file": file, "at": field, "reason": reason})
                        );
                    } else {
                        eprintln!("kexin: refused, nothing loaded: {file}: {field}: {reason}");
                    }
                    Ok(REFUSED)
                }
                Err(e) => Err(e.into()),
            }
        }
        DatasetAction::List {
            space,
            node,
            format,
        } => {
            let space = Space::load(&space)?;
            let loads = data::list(&space, &node)?;
            match format {
                Format::Json => {
                    for l in loads.values() {
                        println!("{}", serde_json::to_string(l)?);
                    }
                }
                _ => {
                    for name in space.datasets.keys() {
                        match loads.get(name) {
                            Some(l) => println!(
                                "{name}: {} rows, {} persons, sha256 {} (loaded {}, audit seq {})",
                                l.rows, l.persons, l.sha256, l.loaded_at, l.audit_seq
                            ),
                            None => println!("{name}: not loaded (read from its declared source)"),
                        }
                    }
                }
            }
            Ok(0)
        }
        DatasetAction::Show {
            space,
            node,
            dataset,
            format,
        } => {
            let space = Space::load(&space)?;
            let loads = data::list(&space, &node)?;
            let Some(l) = loads.get(&dataset) else {
                bail!("dataset {dataset} is not loaded on node {node}");
            };
            if format == Format::Json {
                println!("{}", serde_json::to_string(l)?);
            } else {
                println!(
                    "{dataset} on {node}: {} rows, {} persons, loaded {} (audit seq {})",
                    l.rows, l.persons, l.loaded_at, l.audit_seq
                );
                print_details(l);
            }
            Ok(0)
        }
    }
}

fn print_details(l: &Loaded) {
    println!("  sha256 {}", l.sha256);
    let cols: Vec<String> = l.columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
    println!("  columns: {}", cols.join(", "));
    if !l.converted.is_empty() {
        println!("  converted: {}", l.converted.join("; "));
    }
    if !l.dropped.is_empty() {
        println!("  not declared, left out: {}", l.dropped.join(", "));
    }
    println!("  files: {}", l.files.join(", "));
}
