//! Data holders' accounting statements ([`kexin_engine::accounting`]):
//! signed by the node with its member key, printed as a table, JSON or CSV.

use anyhow::Result;
use ed25519_dalek::SigningKey;
use kexin_engine::accounting::{Line, SignedStatement, Statement};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::policy::Space;

use crate::Format;
use crate::federation::FedConfig;

/// Sign `statement` as node `statement.node` (its member key `me`), with
/// the node's vouch for its log key `verifier`.
pub fn sign(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    statement: Statement,
    verifier: &str,
) -> Result<SignedStatement> {
    let vouch = crate::witness::vouch(space, cfg, me, &statement.node, verifier)?;
    Ok(SignedStatement {
        statement: Signed::sign(tag::STATEMENT, statement, me)?,
        vouch,
    })
}

/// The statement as `kexin accounting statement` prints it.
pub fn render(s: &SignedStatement, format: Format) -> Result<String> {
    let st = &s.statement.body;
    let mut out = String::new();
    match format {
        Format::Json => {
            out.push_str(&serde_json::to_string(s)?);
            out.push('\n');
        }
        Format::Csv => {
            out.push_str(
                "requester,scene,contract,queries,released,held,refused,aborted,joint,epsilon,persons,rows,value\n",
            );
            for l in &st.lines {
                out.push_str(&csv_line(l));
            }
        }
        Format::Table => {
            out.push_str(&format!(
                "statement of node {} (space {}) for {}, {} to {}, made {}\n",
                st.node,
                st.space,
                st.made_for,
                st.from.as_deref().unwrap_or("the start"),
                st.to.as_deref().unwrap_or("now"),
                st.made_at
            ));
            out.push_str(&format!(
                "{:<12} {:<20} {:<22} {:>7} {:>8} {:>5} {:>7} {:>7} {:>5} {:>8} {:>9} {:>9} {:>10}\n",
                "requester",
                "scene",
                "contract",
                "queries",
                "released",
                "held",
                "refused",
                "aborted",
                "joint",
                "ε",
                "persons",
                "rows",
                "value"
            ));
            let total = Line {
                requester: "total".into(),
                ..st.total()
            };
            for l in st.lines.iter().chain(std::iter::once(&total)) {
                out.push_str(&format!(
                    "{:<12} {:<20} {:<22} {:>7} {:>8} {:>5} {:>7} {:>7} {:>5} {:>8.4} {:>9} {:>9} {:>10}\n",
                    l.requester,
                    l.scene,
                    l.contract.as_deref().unwrap_or("-"),
                    l.queries,
                    l.released,
                    l.held,
                    l.refused,
                    l.aborted,
                    l.joint,
                    l.epsilon,
                    shown(l.persons),
                    shown(l.rows),
                    l.value.map_or("-".into(), |v| format!("{v:.2}"))
                ));
            }
            out.push_str(&format!(
                "signed by {} for node {}; check with `kexin accounting verify`\n",
                s.vouch.certificate.body.member, st.node
            ));
        }
    }
    Ok(out)
}

/// One CSV row; fields with a comma or quote are quoted.
fn csv_line(l: &Line) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        field(&l.requester),
        field(&l.scene),
        field(l.contract.as_deref().unwrap_or("")),
        l.queries,
        l.released,
        l.held,
        l.refused,
        l.aborted,
        l.joint,
        l.epsilon,
        l.persons.map_or(String::new(), |p| p.to_string()),
        l.rows.map_or(String::new(), |r| r.to_string()),
        l.value.map_or(String::new(), |v| v.to_string())
    )
}

/// A count a statement may leave out (researchers' statements have none).
fn shown(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
