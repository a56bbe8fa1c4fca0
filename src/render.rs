//! Rendering a query outcome as a table, one JSON object, or CSV.

use crate::federation::JointStatus;
use anyhow::Result;
use kexin_engine::Code;
use kexin_engine::gate::Cell;
use kexin_engine::node::{Outcome, Status};

use crate::Format;

fn text(c: &Cell) -> String {
    match c {
        Cell::Null => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Bool(b) => b.to_string(),
        Cell::Text(s) => s.clone(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A header line and one line per row.
fn csv(columns: &[String], rows: &[Vec<Cell>]) -> String {
    let mut out = columns
        .iter()
        .map(|c| csv_field(c))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        out.push_str(
            &r.iter()
                .map(|c| csv_field(&text(c)))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

pub fn outcome(o: &Outcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string(o)?),
        Format::Csv => {
            let mut out = String::new();
            if o.status == Status::Released {
                out.push_str(&csv(&o.columns, &o.rows));
            } else {
                eprintln!(
                    "{}: {}",
                    o.code.map_or("", Code::as_str),
                    o.rule.as_deref().unwrap_or("")
                );
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            if o.mock {
                out.push_str("MOCK TWIN — synthetic data, not a release\n");
            }
            match o.status {
                Status::Released => {
                    out.push_str(&grid(
                        &o.columns,
                        &o.rows,
                        o.dp.as_ref().map(|d| &d.accuracy),
                    ));
                    out.push_str(&format!(
                        "released: {} row(s), {} group(s) suppressed\n",
                        o.rows.len(),
                        o.suppressed_groups
                    ));
                }
                Status::Refused => {
                    out.push_str(&format!(
                        "refused: {} — {}\n",
                        o.code.map_or("", Code::as_str),
                        o.rule.as_deref().unwrap_or("")
                    ));
                }
                Status::Held => out.push_str("held for data-holder review\n"),
            }
            for e in &o.explanation {
                out.push_str(&format!("  · {e}\n"));
            }
            if let Some(seq) = o.audit_seq {
                out.push_str(&format!("audit entry #{seq}\n"));
            }
            out
        }
    })
}

type AccuracyRows = Vec<Vec<Option<kexin_engine::dp::Accuracy>>>;

/// Rows as an aligned text table; DP values show their 95% interval.
fn grid(columns: &[String], rows: &[Vec<Cell>], accuracy: Option<&AccuracyRows>) -> String {
    let mut out = String::new();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .enumerate()
                .map(
                    |(j, c)| match accuracy.and_then(|a| a.get(i)?.get(j).copied().flatten()) {
                        Some(a) => format!("{} [{}, {}]", text(c), a.interval[0], a.interval[1]),
                        None => text(c),
                    },
                )
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r.get(i).map_or(0, |s| s.chars().count()))
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    out.push_str(&line(columns.iter().map(String::as_str).collect()));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for r in &cells {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A federated outcome.
pub fn federated(o: &crate::federation::FederatedOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string(o)?),
        Format::Csv => {
            let mut out = String::new();
            if o.status == JointStatus::Released {
                out.push_str(&csv(&o.columns, &o.rows));
            } else {
                eprintln!(
                    "{}: {}",
                    o.code.map(kexin_engine::Code::as_str).unwrap_or(""),
                    o.rule.as_deref().unwrap_or("")
                );
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            if o.status == JointStatus::Released {
                let acc = (!o.accuracy.is_empty()).then_some(&o.accuracy);
                out.push_str(&grid(&o.columns, &o.rows, acc));
                out.push_str(&format!(
                    "released: {} row(s), {} cell(s) suppressed\n",
                    o.rows.len(),
                    o.suppressed_groups
                ));
            } else {
                out.push_str(&stopped(
                    o.status.as_str(),
                    o.code.map(kexin_engine::Code::as_str),
                    o.rule.as_deref(),
                ));
            }
            for e in &o.explanation {
                out.push_str(&format!("  · {e}\n"));
            }
            out.push_str(&format!("session {}\n", o.session));
            out.push_str(&node_lines(&o.nodes));
            out
        }
    })
}

/// A PSI outcome.
pub fn psi(o: &crate::federation::PsiOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string(o)?),
        Format::Csv | Format::Table => {
            let mut out = String::new();
            match &o.result {
                Some(r) => {
                    out.push_str(&format!(
                        "intersection size ≈ {} [{}, {}]\n",
                        r.value, r.interval[0], r.interval[1]
                    ));
                    if let Some(s) = &o.sum {
                        out.push_str(&format!(
                            "sum of {} over the intersection ≈ {} [{}, {}]\n",
                            s.column.as_deref().unwrap_or(""),
                            s.value,
                            s.interval[0],
                            s.interval[1]
                        ));
                    }
                    for e in r
                        .explanation
                        .iter()
                        .chain(o.sum.iter().flat_map(|s| &s.explanation))
                    {
                        out.push_str(&format!("  · {e}\n"));
                    }
                }
                None => out.push_str(&stopped(
                    o.status.as_str(),
                    o.code.map(kexin_engine::Code::as_str),
                    o.rule.as_deref(),
                )),
            }
            out.push_str(&format!("session {}\n", o.session));
            for n in &o.nodes {
                out.push_str(&format!(
                    "  {}: {}{}\n",
                    n.node,
                    n.decision,
                    n.audit_seq
                        .map(|s| format!(", audit entry #{s}"))
                        .unwrap_or_default()
                ));
            }
            out
        }
    })
}

/// `status: CODE — rule`, for an outcome that released nothing.
fn stopped(status: &str, code: Option<&str>, rule: Option<&str>) -> String {
    format!(
        "{status}: {} — {}\n",
        code.unwrap_or(""),
        rule.unwrap_or("")
    )
}

/// One line per node: its decision, audit entry and rule.
fn node_lines(nodes: &[crate::federation::NodeReport]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "  {}: {}{}{}\n",
                n.node,
                n.decision,
                n.audit_seq
                    .map(|s| format!(", audit entry #{s}"))
                    .unwrap_or_default(),
                n.rule
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// `kexin contribute`.
pub fn contribution(o: &crate::contribute::ContributeOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string(o)?),
        Format::Csv | Format::Table => {
            let mut out = match o.status.as_str() {
                "accepted" => format!(
                    "accepted: report {} under {} (each aggregator holds one share; the value is not stored anywhere in the clear)\n",
                    o.report, o.scene
                ),
                s => stopped(s, o.code.map(kexin_engine::Code::as_str), o.rule.as_deref()),
            };
            out.push_str(&node_lines(&o.nodes));
            out
        }
    })
}

/// `kexin collect`.
pub fn collection(o: &crate::contribute::CollectOutcome, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string(o)?),
        Format::Csv => {
            let mut out = String::from("label,value\n");
            if let Some(r) = &o.result {
                for (l, v) in r.labels.iter().zip(&r.values) {
                    out.push_str(&format!("{},{v}\n", csv_field(l)));
                }
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            match &o.result {
                Some(r) => {
                    let w = r
                        .labels
                        .iter()
                        .map(|l| l.chars().count())
                        .max()
                        .unwrap_or(5);
                    for (l, v) in r.labels.iter().zip(&r.values) {
                        out.push_str(&format!("{l:<w$}  {v}\n"));
                    }
                    if let Some(n) = r.reports {
                        out.push_str(&format!(
                            "{n} valid report(s), {} rejected\n",
                            r.rejected.unwrap_or(0)
                        ));
                    }
                    if let (Some(e), Some(h)) = (r.epsilon, r.half_width_95) {
                        out.push_str(&format!(
                            "ε = {e}; 95% of values within ±{h:.1} of the truth\n"
                        ));
                    }
                    for e in &r.explanation {
                        out.push_str(&format!("  · {e}\n"));
                    }
                }
                None => out.push_str(&stopped(
                    o.status.as_str(),
                    o.code.map(kexin_engine::Code::as_str),
                    o.rule.as_deref(),
                )),
            }
            out.push_str(&format!("session {}\n", o.session));
            out.push_str(&node_lines(&o.nodes));
            out
        }
    })
}

/// A UDF function's signature as `kexin udf list` prints it:
/// `scalar bmi(f64, f64) -> f64`.
pub fn udf_signature(f: &kexin_sandbox::Function) -> String {
    let args: Vec<String> = f
        .args
        .iter()
        .map(|t| {
            serde_json::to_string(t)
                .unwrap_or_default()
                .replace('"', "")
        })
        .collect();
    let ret = serde_json::to_string(&f.returns)
        .unwrap_or_default()
        .replace('"', "");
    let kind = match f.kind {
        kexin_sandbox::Kind::Scalar => "scalar",
        kexin_sandbox::Kind::Aggregate => "aggregate",
    };
    let domain = if f.domain.is_some() {
        " (finite domain)"
    } else {
        ""
    };
    format!("{kind} {}({}) -> {ret}{domain}", f.name, args.join(", "))
}
