//! `kexin accounting statement | verify`: a data holder's signed statement
//! of what its node answered, and its offline check.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use kexin::Format;
use kexin::federation::{FromNode, ToNode};
use kexin_engine::accounting::SignedStatement;
use kexin_engine::policy::Space;

use super::{Reader, load, print_refused, reader};
use crate::cli::target::{Target, answer};

#[derive(Subcommand, Debug)]
pub enum AccountingAction {
    /// A signed statement of what the node answered, per requester, scene
    /// and contract: queries, released, held, refused and aborted results,
    /// joint computations, and the ε charged for releases on its data. The
    /// node's data holders and the operator get every requester's lines; a
    /// researcher their own.
    Statement {
        #[command(flatten)]
        on: Reader,
        /// First day covered (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day covered (YYYY-MM-DD, UTC).
        #[arg(long)]
        to: Option<String>,
        /// Also write the signed statement (JSON) here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check a signed statement (`statement --out` or `--format json`)
    /// offline with the space's operator key: exit status 0 when it
    /// checks, 5 when it does not.
    Verify {
        file: PathBuf,
        #[arg(long)]
        space: Option<PathBuf>,
        /// The operator key (hex), when not from --space.
        #[arg(long)]
        operator_key: Option<String>,
    },
}

pub(crate) fn accounting(action: AccountingAction) -> Result<u8> {
    match action {
        AccountingAction::Statement {
            on,
            from,
            to,
            out,
            format,
        } => {
            for d in [&from, &to].into_iter().flatten() {
                anyhow::ensure!(
                    kexin_engine::identity::valid_date(d),
                    "--from and --to are YYYY-MM-DD"
                );
            }
            let space = load(&on.space)?;
            let target = reader(&space, &on)?;
            let signed = match &target {
                Target::Local { node, .. } => {
                    // In process, on the node's machine: for --as, else
                    // for the space's operator.
                    let member = on
                        .member
                        .clone()
                        .or_else(|| {
                            space
                                .members
                                .values()
                                .find(|m| m.role == kexin_engine::identity::Role::Operator)
                                .map(|m| m.name.clone())
                        })
                        .context("the space has no operator; pass --as")?;
                    let s = match answer(node.statement(&member, from.as_deref(), to.as_deref()))? {
                        Ok(s) => s,
                        Err(r) => return print_refused(r, format),
                    };
                    let (cfg, me) = kexin::federation::node_identity(&space.dir, node.name())?;
                    kexin::accounting::sign(&space, &cfg, &me, s, &node.log_verifier())?
                }
                _ => match target.call(ToNode::Statement { from, to }, |m| match m {
                    FromNode::Statement(s) => Ok(*s),
                    other => Err(Box::new(other)),
                })? {
                    Ok(s) => s,
                    Err(r) => return print_refused(r, format),
                },
            };
            if let Some(p) = &out {
                std::fs::write(p, serde_json::to_string_pretty(&signed)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            print!("{}", kexin::accounting::render(&signed, format)?);
            Ok(0)
        }
        AccountingAction::Verify {
            file,
            space,
            operator_key,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let op = match (operator_key, space) {
                (Some(k), _) => kexin_engine::identity::parse_public_key(&k)
                    .context("--operator-key is not a hex ed25519 public key")?,
                (None, Some(dir)) => Space::load(&dir)?
                    .operator_key
                    .context("space.toml has no space.operator_key")?,
                (None, None) => anyhow::bail!("pass --space or --operator-key"),
            };
            let Ok(signed) = serde_json::from_str::<SignedStatement>(text.trim()) else {
                println!("NOT VERIFIED: {} is not a signed statement", file.display());
                return Ok(5);
            };
            match signed.check(&op) {
                Ok(s) => {
                    let t = s.total();
                    println!(
                        "verified: statement of node {} for {} ({} lines; {} queries, {} released, ε {:.4}), signed by {}",
                        s.node,
                        s.made_for,
                        s.lines.len(),
                        t.queries,
                        t.released,
                        t.epsilon,
                        signed.vouch.certificate.body.member
                    );
                    Ok(0)
                }
                Err(e) => {
                    println!("NOT VERIFIED: {e}");
                    Ok(5)
                }
            }
        }
    }
}
