//! `kexin dispute open | resolve | list`: disputes over audited actions
//! ([`kexin_engine::dispute`]), through the node's server (or `--local`).

use anyhow::Result;
use clap::Subcommand;
use kexin::Format;
use kexin::members;
use kexin_engine::dispute::{Dispute, Outcome};

use super::{OnNode, Reader, load, print_refused, reach, reader};

#[derive(Subcommand, Debug)]
pub enum DisputeAction {
    /// A party to audit entry SEQ of the node (its actor, a data holder of
    /// the node, the operator, or a person whose records it used) opens a
    /// dispute over it, signed; every other party sees it.
    Open {
        #[command(flatten)]
        on: OnNode,
        /// The audit entry disputed (a result's `audit_seq`).
        #[arg(long)]
        seq: u64,
        /// Why (plain text, at most 2000 characters).
        #[arg(long)]
        reason: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A data holder of the node or the operator upholds or dismisses an
    /// open dispute; the member who opened it may withdraw it.
    Resolve {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: u64,
        /// upheld, dismissed or withdrawn.
        #[arg(long, value_parser = parse_outcome)]
        outcome: Outcome,
        /// What was found or done (plain text, at most 2000 characters).
        #[arg(long)]
        note: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The disputes on the node the member may see: all of them for the
    /// node's data holders and the operator, else those over entries they
    /// are a party to.
    List {
        #[command(flatten)]
        on: Reader,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    Outcome::parse(s).ok_or_else(|| "expected upheld, dismissed or withdrawn".to_string())
}

fn print(d: &Dispute, format: Format) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string(d)?);
        return Ok(());
    }
    println!(
        "dispute #{} on node {} over entry #{} ({} {} by {}{}): {} — opened by {} (audit seq {}): {}",
        d.id,
        d.node,
        d.seq,
        d.kind,
        d.scene,
        d.actor,
        d.contract
            .as_deref()
            .map(|c| format!(", contract {c}"))
            .unwrap_or_default(),
        d.state,
        d.opened_by,
        d.open_audit_seq,
        d.reason
    );
    if let (Some(by), Some(note)) = (&d.resolved_by, &d.note) {
        println!(
            "  {} by {} (audit seq {}): {}",
            d.state,
            by,
            d.resolve_audit_seq.unwrap_or_default(),
            note
        );
    }
    Ok(())
}

pub(crate) fn dispute(action: DisputeAction) -> Result<u8> {
    match action {
        DisputeAction::Open {
            on,
            seq,
            reason,
            format,
        } => {
            let space = load(&on.space)?;
            let (key, target) = reach(&space, &on.member, &on.via)?;
            let env =
                members::dispute_opening(&space, target.name(), &on.member, &key, seq, &reason)?;
            match target.dispute_open(env)? {
                Ok(d) => print(&d, format).map(|()| 0),
                Err(r) => print_refused(r, format),
            }
        }
        DisputeAction::Resolve {
            on,
            id,
            outcome,
            note,
            format,
        } => {
            let space = load(&on.space)?;
            let (key, target) = reach(&space, &on.member, &on.via)?;
            let env = members::dispute_resolution(
                &space,
                target.name(),
                &on.member,
                &key,
                id,
                outcome,
                &note,
            )?;
            match target.dispute_resolve(env)? {
                Ok(d) => print(&d, format).map(|()| 0),
                Err(r) => print_refused(r, format),
            }
        }
        DisputeAction::List { on, format } => {
            let space = load(&on.space)?;
            match reader(&space, &on)?.disputes()? {
                Ok(all) => {
                    for d in &all {
                        print(d, format)?;
                    }
                    if all.is_empty() && format != Format::Json {
                        println!("no disputes");
                    }
                    Ok(0)
                }
                Err(r) => print_refused(r, format),
            }
        }
    }
}
