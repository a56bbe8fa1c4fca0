//! Each role's home page: what an individual, a data holder (or the
//! operator) and a researcher read, with the forms that prepare their
//! actions. Every read is the engine's answer to the member
//! (`Console::ask`), so a page shows what the API would.

use std::collections::HashMap;
use std::sync::Arc;

use kexin_engine::audit::AuditEntry;
use kexin_engine::identity::Role;
use kexin_engine::log_view::MAX_PAGE;
use maud::{Markup, html};

use super::view::{self, Lang, Who, t};
use super::{Session, Shared, svg};
use crate::federation::wire::{FromNode, ToNode};

/// An individual: every scene that may use their records, their consent
/// for each with grant and revoke, and the timeline of uses and receipts.
pub(super) async fn individual(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
    let consents = match c
        .ask(
            s,
            ToNode::Consents {
                person: None,
                scene: None,
            },
        )
        .await
    {
        FromNode::Consents(v) => v,
        _ => vec![],
    };
    let uses = match c.ask(s, ToNode::History).await {
        FromNode::History(v) => v,
        _ => vec![],
    };
    // Their own contributions to joint statistics on this node (Prio3
    // reports, audited with the person as actor).
    let contributions: Vec<AuditEntry> = own_entries(c, s)
        .await
        .into_iter()
        .filter(|e| e.kind == kexin_engine::audit::Kind::Contribution.as_str())
        .collect();
    // The latest receipt per scene is the consent in force (or not).
    let mut latest: HashMap<&str, &kexin_engine::consent::ConsentRecord> = HashMap::new();
    for r in &consents {
        latest.insert(r.scene.as_str(), r);
    }
    // One timeline: uses and receipts, newest first.
    let mut events: Vec<(String, Markup)> = uses
        .iter()
        .map(|u| {
            (
                u.time.clone(),
                html! {
                    td { (u.time) }
                    td { (t(lang, "use_of_records")) ": " (u.scene) }
                    td { (u.requester) }
                    td class=(u.decision.as_str()) { (u.decision.as_str()) }
                    td {
                        (u.node) " #" (u.audit_seq)
                        @for d in &u.disputes {
                            " · " span.note { (t(lang, "disputed")) " #" (d.id) ": " (d.state) }
                        }
                    }
                },
            )
        })
        .chain(contributions.iter().map(|e| {
            (
                e.time.clone(),
                html! {
                    td { (e.time) }
                    td { (t(lang, "contribution")) ": " (e.scene) }
                    td {}
                    td class=(e.decision) { (e.decision) }
                    td { (e.node) " #" (e.seq) }
                },
            )
        }))
        .chain(consents.iter().map(|r| {
            (
                r.recorded_at.clone(),
                html! {
                    td { (r.recorded_at) }
                    td { (t(lang, "receipt")) ": " (r.action.as_str()) " " (r.scene) }
                    td { (r.requester) }
                    td.ok { (r.action.as_str()) }
                    td { "#" (r.seq) }
                },
            )
        }))
        .collect();
    events.sort_by(|a, b| b.0.cmp(&a.0));
    html! {
        section {
            h2 { (t(lang, "scenes")) }
            table {
                thead { tr {
                    th scope="col" { (t(lang, "scene")) }
                    th scope="col" { (t(lang, "purpose")) }
                    th scope="col" { (t(lang, "purpose_code")) }
                    th scope="col" { (t(lang, "requester")) }
                    th scope="col" { (t(lang, "validity")) }
                    th scope="col" { (t(lang, "consent_needed")) }
                    th scope="col" { (t(lang, "my_consent")) }
                } }
                tbody {
                    @for sc in c.server.space.scenes.values() {
                        @let required = sc.consent == kexin_engine::policy::ConsentMode::Required;
                        tr {
                            td { (sc.name) }
                            td { (purpose_text(lang, sc)) }
                            td { code { (sc.purpose_code.code()) } }
                            td { (sc.requester) }
                            td { (sc.valid_from) " – " (sc.valid_to) }
                            td { (if required { t(lang, "yes") } else { t(lang, "no") }) }
                            td {
                                @if !required {
                                    span.note { (t(lang, "not_needed")) }
                                } @else {
                                @match latest.get(sc.name.as_str()) {
                                    Some(r) if r.action == kexin_engine::consent::Verb::Grant => {
                                        span.ok {
                                            @match &r.until {
                                                Some(u) => { (t(lang, "granted_until")) " " (u) }
                                                None => { (t(lang, "granted")) }
                                            }
                                        }
                                        " "
                                        (view::action_button(who, "consent-revoke", &[("scene", sc.name.clone())], t(lang, "revoke"), "secondary"))
                                    }
                                    Some(_) => { span { (t(lang, "revoked")) } " " (grant_form(lang, who, &sc.name)) }
                                    None => { span { (t(lang, "none")) } " " (grant_form(lang, who, &sc.name)) }
                                }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (t(lang, "timeline")) }
            p.note { (t(lang, "timeline_help")) }
            @if events.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "when")) }
                        th scope="col" { (t(lang, "what")) }
                        th scope="col" { (t(lang, "requester")) }
                        th scope="col" { (t(lang, "decision")) }
                        th scope="col" { (t(lang, "entry")) }
                    } }
                    tbody { @for (_, row) in &events { tr { (row) } } }
                }
            }
        }
    }
}

/// What a scene's data may be used for, in words: the scene's own Chinese
/// text where it has one (in Chinese), else its DUO purpose.
fn purpose_text(lang: Lang, sc: &kexin_engine::policy::Scene) -> String {
    use kexin_engine::purpose::Purpose;
    if lang == Lang::Zh
        && let Some(zh) = &sc.purpose_zh
    {
        return zh.clone();
    }
    match (&sc.purpose_code, lang) {
        (Purpose::Gru, Lang::Zh) => "一般研究用途".into(),
        (Purpose::Gru, Lang::En) => "general research use".into(),
        (Purpose::Hmb, Lang::Zh) => "健康、医学与生物医学研究".into(),
        (Purpose::Hmb, Lang::En) => "health, medical and biomedical research".into(),
        (Purpose::Disease(d), Lang::Zh) => format!("特定疾病研究（ICD-10 {d}）"),
        (Purpose::Disease(d), Lang::En) => format!("disease-specific research (ICD-10 {d})"),
    }
}

fn grant_form(lang: Lang, who: &Who<'_>, scene: &str) -> Markup {
    let id = format!("until-{scene}");
    html! {
        form.inline method="post" action="/console/prepare" {
            input type="hidden" name="csrf" value=(who.csrf);
            input type="hidden" name="action" value="consent-grant";
            input type="hidden" name="scene" value=(scene);
            label for=(id) { (t(lang, "until")) }
            input id=(id) type="date" name="until";
            button type="submit" { (t(lang, "grant")) }
        }
    }
}

/// A data holder (or the operator): the airlock queue, contracts, approved
/// modules and the node's checkpoint with a verify button.
pub(super) async fn holder(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
    let held = match c.ask(s, ToNode::Airlock).await {
        FromNode::Held(v) => v,
        _ => vec![],
    };
    let contracts = match c.ask(s, ToNode::Contracts).await {
        FromNode::Contracts(v) => v,
        _ => vec![],
    };
    let udfs = match c.ask(s, ToNode::Udfs { scene: None }).await {
        FromNode::Udfs(v) => v,
        _ => vec![],
    };
    let submitted: Vec<_> = match c.ask(s, ToNode::UdfSubmissions { scene: None }).await {
        FromNode::Submissions(v) => v.into_iter().filter(|u| !u.approved).collect(),
        _ => vec![],
    };
    let checkpoint = c.server.node.checkpoint_for_witnesses().ok().flatten();
    // Why each result was held: the scene's release rule, or else the
    // contract's (a contract can make release stricter, never looser).
    let rule_of = |h: &kexin_engine::airlock::Held| {
        let by_scene = c
            .server
            .space
            .scenes
            .get(&h.scene)
            .is_some_and(|sc| sc.release == kexin_engine::policy::Release::Review);
        format!(
            "{} ({} {})",
            t(
                lang,
                if by_scene {
                    "held_by_scene"
                } else {
                    "held_by_contract"
                }
            ),
            h.approvers_needed,
            t(lang, "approvers")
        )
    };
    let waiting: Vec<_> = held
        .iter()
        .filter(|h| h.state == kexin_engine::airlock::State::Held)
        .collect();
    html! {
        section {
            h2 { (t(lang, "airlock")) }
            p.note { (t(lang, "airlock_help")) }
            @if waiting.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "requester")) }
                        th scope="col" { (t(lang, "rule")) }
                        th scope="col" { (t(lang, "approvals")) }
                        th scope="col" { (t(lang, "digest")) }
                        th scope="col" {}
                    } }
                    tbody {
                        @for h in &waiting {
                            tr {
                                td { (h.id) }
                                td { (h.scene) }
                                td { (h.requester) }
                                td { (rule_of(h)) }
                                td { (h.approvals.len()) " / " (h.approvers_needed) }
                                td { code { (h.output_sha256.get(..16).unwrap_or(&h.output_sha256)) "…" } }
                                td {
                                    (view::action_button(who, "airlock-approve", &[("id", h.id.to_string())], t(lang, "approve"), ""))
                                    " "
                                    (view::action_button(who, "airlock-reject", &[("id", h.id.to_string())], t(lang, "reject"), "secondary"))
                                }
                            }
                        }
                    }
                }
            }
        }
        (contracts_table(lang, who, s.role, &contracts))
        section {
            h2 { (t(lang, "offer")) }
            form method="post" action="/console/prepare" {
                input type="hidden" name="csrf" value=(who.csrf);
                input type="hidden" name="action" value="contract-offer";
                p {
                    label for="offer-scene" { (t(lang, "scene")) }
                    " "
                    select id="offer-scene" name="scene" {
                        @for sc in c.server.space.scenes.values() { option value=(sc.name) { (sc.name) } }
                    }
                    " "
                    label for="offer-requester" { (t(lang, "researcher")) }
                    " "
                    select id="offer-requester" name="requester" {
                        @for (name, m) in &c.server.space.members {
                            @if m.role == Role::Researcher { option value=(name) { (name) } }
                        }
                    }
                    " "
                    label for="offer-max" { (t(lang, "max_queries")) }
                    " "
                    input id="offer-max" name="max_queries" type="number" min="1" value="10";
                    " "
                    button type="submit" { (t(lang, "offer")) }
                }
            }
        }
        section {
            h2 { (t(lang, "udfs_waiting")) }
            @if submitted.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "digest")) }
                        th scope="col" { (t(lang, "functions")) }
                        th scope="col" { (t(lang, "submitted_by")) }
                        th scope="col" { (t(lang, "when")) }
                        th scope="col" {}
                    } }
                    tbody {
                        @for u in &submitted {
                            tr {
                                td { (u.scene) }
                                td { code { (u.digest) } }
                                td { ul { @for f in &u.functions {
                                    li { code { (crate::render::udf_signature(f)) } @if !f.description.is_empty() { " — " (f.description) } }
                                } } }
                                td { (u.submitted_by) }
                                td { (u.submitted_at) }
                                td { (view::action_button(who, "udf-approve", &[("scene", u.scene.clone()), ("digest", u.digest.clone())], t(lang, "approve"), "")) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (t(lang, "udfs")) }
            @if udfs.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "digest")) }
                        th scope="col" { (t(lang, "functions")) }
                        th scope="col" { (t(lang, "approved_by")) }
                    } }
                    tbody {
                        @for u in &udfs {
                            tr {
                                td { (u.scene) }
                                td { code { (u.digest) } }
                                td { ul { @for f in &u.functions { li { code { (crate::render::udf_signature(f)) } } } } }
                                td { (u.approved_by.as_deref().unwrap_or(u.source.as_str())) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (t(lang, "checkpoint")) }
            @match &checkpoint {
                Some((note, verifier)) => {
                    pre.body { (note) }
                    p.note { code { (verifier) } }
                }
                None => (view::nothing(lang)),
            }
            form method="get" action="/console/verify" {
                button type="submit" id="verify" { (t(lang, "verify")) }
            }
        }
    }
}

fn contracts_table(
    lang: Lang,
    who: &Who<'_>,
    role: Role,
    contracts: &[kexin_engine::contract::Contract],
) -> Markup {
    use kexin_engine::contract::State;
    html! {
        section {
            h2 { (t(lang, "contracts")) }
            @if contracts.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "contract")) }
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "researcher")) }
                        th scope="col" { (t(lang, "state")) }
                        th scope="col" { (t(lang, "queries_left")) }
                        th scope="col" { (t(lang, "valid_to")) }
                        th scope="col" {}
                    } }
                    tbody {
                        @for k in contracts {
                            tr {
                                td { code { (k.id) } }
                                td { (k.terms.scene) }
                                td { (k.terms.requester) }
                                td { (k.state.as_str()) }
                                td { (k.queries_left()) }
                                td { (k.terms.valid_to) }
                                td {
                                    @let id = vec![("contract", k.id.clone())];
                                    @if role == Role::Researcher && k.state == State::Offered {
                                        (view::action_button(who, "contract-agree", &id, t(lang, "agree"), ""))
                                    }
                                    @if role != Role::Researcher && k.state == State::Agreed {
                                        (view::action_button(who, "contract-finalize", &id, t(lang, "finalize"), ""))
                                    }
                                    @if role != Role::Researcher && k.state != State::Terminated {
                                        " "
                                        (view::action_button(who, "contract-terminate", &id, t(lang, "terminate"), "secondary"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The audit entries of this node the session's member may see.
async fn own_entries(c: &Shared, s: &Session) -> Vec<AuditEntry> {
    let server = Arc::clone(&c.server);
    let member = s.member.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let (mut from, mut size) = (1, None);
        while let Ok((page, _)) = server.node.audit_log(&member, size, from, MAX_PAGE) {
            out.extend(
                page.entries
                    .iter()
                    .filter_map(|e| serde_json::from_str::<AuditEntry>(e).ok()),
            );
            size = Some(page.size);
            from = page.next();
            if page.leaves.is_empty() || from > page.size {
                break;
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}

/// A researcher: a query form, their contracts, held results to fetch,
/// their ε per scene with its spending over time, and their receipts.
pub(super) async fn researcher(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
    let contracts = match c.ask(s, ToNode::Contracts).await {
        FromNode::Contracts(v) => v,
        _ => vec![],
    };
    let budgets = match c
        .ask(
            s,
            ToNode::Budgets {
                actor: None,
                scene: None,
            },
        )
        .await
    {
        FromNode::Budgets(v) => v,
        _ => vec![],
    };
    let held = match c.ask(s, ToNode::Airlock).await {
        FromNode::Held(v) => v,
        _ => vec![],
    };
    let entries = own_entries(c, s).await;
    let checkpoint = c.server.node.checkpoint_for_witnesses().ok().flatten();
    // ε spent over time per scene, from this researcher's own entries.
    let mut series: Vec<svg::Series> = Vec::new();
    for e in entries.iter().filter(|e| e.epsilon.is_some()) {
        let total = budgets
            .iter()
            .find(|b| b.scene == e.scene)
            .map(|b| b.epsilon_total);
        let at = match series.iter().position(|x| x.name == e.scene) {
            Some(i) => i,
            None => {
                series.push(svg::Series {
                    name: e.scene.clone(),
                    points: vec![],
                    limit: total,
                });
                series.len() - 1
            }
        };
        let last = series[at].points.last().copied().unwrap_or(0.0);
        series[at].points.push(last + e.epsilon.unwrap_or(0.0));
    }
    let receipts: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.kind == "query" && e.actor == s.member)
        .collect();
    let scenes: Vec<&String> = c
        .server
        .space
        .scenes
        .values()
        .filter(|sc| !sc.federated)
        .map(|sc| &sc.name)
        .collect();
    html! {
        section {
            h2 { (t(lang, "query")) }
            form method="post" action="/console/prepare" {
                input type="hidden" name="csrf" value=(who.csrf);
                input type="hidden" name="action" value="query";
                p {
                    label for="q-scene" { (t(lang, "scene")) }
                    " "
                    select id="q-scene" name="scene" {
                        @for sc in &scenes { option value=(sc) { (sc) } }
                    }
                }
                p {
                    label for="q-sql" { (t(lang, "sql")) }
                    textarea id="q-sql" name="sql" {}
                }
                button type="submit" id="run" { (t(lang, "run")) }
            }
        }
        (contracts_table(lang, who, s.role, &contracts))
        @let mine: Vec<_> = held.iter().filter(|h| h.state == kexin_engine::airlock::State::Released).collect();
        @if !mine.is_empty() {
            section {
                h2 { (t(lang, "airlock")) }
                table {
                    thead { tr { th scope="col" { "#" } th scope="col" { (t(lang, "scene")) } th scope="col" { (t(lang, "state")) } th scope="col" {} } }
                    tbody {
                        @for h in &mine {
                            tr {
                                td { (h.id) }
                                td { (h.scene) }
                                td.released { (h.state.as_str()) }
                                td { (view::action_button(who, "airlock-fetch", &[("id", h.id.to_string())], t(lang, "fetch"), "")) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (t(lang, "budgets")) }
            @if budgets.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "spent")) }
                        th scope="col" { (t(lang, "remaining")) }
                        th scope="col" { (t(lang, "total")) }
                    } }
                    tbody {
                        @for b in &budgets {
                            tr {
                                td { (b.scene) }
                                td { (format!("{:.3}", b.epsilon_spent)) }
                                td { (format!("{:.3}", b.epsilon_remaining)) }
                                td { (format!("{:.3}", b.epsilon_total)) }
                            }
                        }
                    }
                }
            }
            @if !series.is_empty() {
                figure {
                    (svg::steps(t(lang, "spending"), "ε", &series))
                    figcaption { (t(lang, "spending")) }
                }
            }
        }
        section {
            h2 { (t(lang, "receipts")) }
            p.note { (t(lang, "receipts_help")) }
            @if receipts.is_empty() { (view::nothing(lang)) } @else {
                table {
                    thead { tr {
                        th scope="col" { (t(lang, "entry")) }
                        th scope="col" { (t(lang, "when")) }
                        th scope="col" { (t(lang, "scene")) }
                        th scope="col" { (t(lang, "decision")) }
                        th scope="col" { (t(lang, "digest")) }
                    } }
                    tbody {
                        @for e in receipts.iter().rev() {
                            tr {
                                td { "#" (e.seq) }
                                td { (e.time) }
                                td { (e.scene) }
                                td class=(e.decision) { (e.decision) @if let Some(code) = &e.code { " " code { (code) } } }
                                td { code { (e.output_sha256.as_deref().unwrap_or("")) } }
                            }
                        }
                    }
                }
                @if let Some((note, _)) = &checkpoint {
                    details { summary { (t(lang, "checkpoint")) } pre.body { (note) } }
                }
            }
        }
    }
}
