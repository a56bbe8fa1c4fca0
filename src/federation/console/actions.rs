//! Actions: a prepare form becomes the exact body to sign (built here as
//! the CLI builds it), shown on a confirmation page; the browser signs it;
//! the signed body goes to the engine as the API's request would.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kexin_engine::Code;
use kexin_engine::identity::{QueryBody, Signed, nonce as fresh_nonce, tag};
use maud::{Markup, html};
use serde::Deserialize;

use super::view::{self, Lang, Who, t};
use super::{Console, FORGED, SIGNED_OUT, Session, Shared, csrf_ok};
use crate::federation::wire::{FromNode, ToNode};

/// What a prepare form asks for.
#[derive(Debug, Deserialize)]
pub(super) struct PrepareForm {
    #[serde(default)]
    csrf: String,
    action: String,
    scene: Option<String>,
    until: Option<String>,
    id: Option<u64>,
    contract: Option<String>,
    sql: Option<String>,
    requester: Option<String>,
    max_queries: Option<u64>,
    digest: Option<String>,
}

/// The body to sign for an action, with its tag and a summary to show.
struct Prepared {
    tag: &'static str,
    body: String,
    summary: Vec<(String, String)>,
}

pub(super) async fn prepare(
    State(c): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<PrepareForm>,
) -> Response {
    let lang = Console::lang(&headers);
    let Some(s) = c.session(&headers) else {
        return c.refused(lang, None, StatusCode::UNAUTHORIZED, Code::Auth, SIGNED_OUT);
    };
    if !csrf_ok(&s, &f.csrf) {
        return c.refused(lang, Some(&s), StatusCode::FORBIDDEN, Code::Request, FORGED);
    }
    match build(&c, &s, &f).await {
        Ok(p) => {
            let who = Who {
                member: &s.member,
                role: s.role.as_str(),
                csrf: &s.csrf,
            };
            let body = view::confirm(lang, &who, &f.action, &p.summary, p.tag, &p.body);
            c.page(lang, Some(&s), StatusCode::OK, body)
        }
        Err((code, rule)) => c.refused(lang, Some(&s), StatusCode::BAD_REQUEST, code, &rule),
    }
}

/// The unsigned body of an action by the session's member, built here as
/// the CLI builds it (fresh nonce and time).
async fn build(
    c: &Shared,
    s: &Session,
    f: &PrepareForm,
) -> std::result::Result<Prepared, (Code, String)> {
    use kexin_engine::{airlock, consent, contract};
    let bad = |rule: &str| (Code::Request, rule.to_string());
    let space = &c.server.space;
    let node = c.node_name().to_string();
    let nonce = fresh_nonce().map_err(|_| bad("no nonce"))?;
    let time = kexin_engine::clock::now_utc().1;
    let scene_of = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| space.scenes.get(n))
            .ok_or_else(|| bad("no such scene"))
    };
    let json = |v: &dyn erased_json::Json| v.text().map_err(|_| bad("the body does not serialize"));
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    match f.action.as_str() {
        "consent-grant" | "consent-revoke" => {
            let sc = scene_of(&f.scene)?;
            let grant = f.action == "consent-grant";
            let until = f.until.clone().filter(|u| !u.is_empty() && grant);
            if until
                .as_deref()
                .is_some_and(|u| !kexin_engine::clock::valid_date(u))
            {
                return Err(bad("the date is not YYYY-MM-DD"));
            }
            let body = consent::ConsentReceipt {
                space: space.name.clone(),
                person: s.member.clone(),
                scene: sc.name.clone(),
                action: if grant {
                    consent::Verb::Grant
                } else {
                    consent::Verb::Revoke
                },
                purpose: sc.purpose_code.code(),
                modifiers: vec![],
                requester: sc.requester.clone(),
                until: until.clone(),
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::CONSENT,
                body: json(&body)?,
                summary: vec![
                    kv("action", body.action.as_str()),
                    kv("scene", &sc.name),
                    kv("purpose", sc.purpose_zh.as_deref().unwrap_or(&sc.purpose)),
                    kv("requester", &sc.requester),
                    kv("until", until.as_deref().unwrap_or("-")),
                ],
            })
        }
        "airlock-approve" | "airlock-reject" | "airlock-fetch" => {
            let id = f.id.ok_or_else(|| bad("no result id"))?;
            let held = match c.ask(s, ToNode::Airlock).await {
                FromNode::Held(v) => v,
                FromNode::Refused { code, rule, .. } => return Err((code, rule)),
                _ => vec![],
            };
            let h = held.into_iter().find(|h| h.id == id).ok_or_else(|| {
                (
                    Code::Review,
                    "no such held result for this member".to_string(),
                )
            })?;
            let action = match f.action.as_str() {
                "airlock-approve" => airlock::Verb::Approve,
                "airlock-reject" => airlock::Verb::Reject,
                _ => airlock::Verb::Fetch,
            };
            let body = airlock::Decision {
                space: space.name.clone(),
                node,
                id,
                action,
                member: s.member.clone(),
                output_sha256: h.output_sha256.clone(),
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::REVIEW,
                body: json(&body)?,
                summary: vec![
                    kv("action", action.as_str()),
                    kv("id", &id.to_string()),
                    kv("scene", &h.scene),
                    kv("requester", &h.requester),
                    kv("output_sha256", &h.output_sha256),
                ],
            })
        }
        "contract-agree" | "contract-finalize" | "contract-terminate" => {
            let id = f.contract.clone().ok_or_else(|| bad("no contract"))?;
            let action = match f.action.as_str() {
                "contract-agree" => contract::Verb::Agree,
                "contract-finalize" => contract::Verb::Finalize,
                _ => contract::Verb::Terminate,
            };
            let body = contract::Action {
                space: space.name.clone(),
                node,
                contract: id.clone(),
                action,
                member: s.member.clone(),
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::CONTRACT,
                body: json(&body)?,
                summary: vec![kv("action", action.as_str()), kv("contract", &id)],
            })
        }
        "contract-offer" => {
            let sc = scene_of(&f.scene)?;
            let requester = f.requester.clone().ok_or_else(|| bad("no researcher"))?;
            let body = contract::Terms {
                space: space.name.clone(),
                node,
                holder: s.member.clone(),
                requester: requester.clone(),
                scene: sc.name.clone(),
                datasets: sc.datasets.clone(),
                release: sc.release,
                max_queries: f.max_queries.unwrap_or(10).max(1),
                epsilon: None,
                valid_to: sc.valid_to.clone(),
                pause_on_dispute: false,
                fee_per_release: None,
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::CONTRACT,
                body: json(&body)?,
                summary: vec![
                    kv("scene", &sc.name),
                    kv("requester", &requester),
                    kv("max_queries", &body.max_queries.to_string()),
                    kv("valid_to", &body.valid_to),
                ],
            })
        }
        "udf-approve" => {
            let sc = scene_of(&f.scene)?;
            let digest = f.digest.clone().ok_or_else(|| bad("no module digest"))?;
            let body = kexin_engine::identity::UdfApprovalBody {
                space: space.name.clone(),
                node,
                scene: sc.name.clone(),
                member: s.member.clone(),
                module_sha256: digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&digest)
                    .to_string(),
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::UDF,
                body: json(&body)?,
                summary: vec![kv("scene", &sc.name), kv("module_sha256", &digest)],
            })
        }
        "query" => {
            let sc = scene_of(&f.scene)?;
            let sql = f.sql.clone().unwrap_or_default();
            if sql.trim().is_empty() {
                return Err(bad("no SQL"));
            }
            // The member's agreed contract for the scene, if any.
            let contract = match c.ask(s, ToNode::Contracts).await {
                FromNode::Contracts(v) => v
                    .into_iter()
                    .filter(|k| {
                        k.terms.scene == sc.name
                            && k.terms.requester == s.member
                            && k.state == contract::State::Finalized
                    })
                    .map(|k| k.id)
                    .next_back(),
                _ => None,
            };
            let body = QueryBody {
                space: space.name.clone(),
                node,
                member: s.member.clone(),
                scene: sc.name.clone(),
                contract: contract.clone(),
                sql: sql.clone(),
                nonce,
                time,
            };
            Ok(Prepared {
                tag: tag::QUERY,
                body: json(&body)?,
                summary: vec![
                    kv("scene", &sc.name),
                    kv("contract", contract.as_deref().unwrap_or("-")),
                    kv("sql", &sql),
                ],
            })
        }
        _ => Err(bad("no such action")),
    }
}

/// Serializing a body of any action type to its JSON text.
mod erased_json {
    pub trait Json {
        fn text(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn text(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

/// A signed action from a confirmation page.
#[derive(Debug, Deserialize)]
pub(super) struct ActForm {
    #[serde(default)]
    csrf: String,
    kind: String,
    tag: String,
    body: String,
    signature: String,
}

/// The signed envelope of `body` with `signature`, when it parses.
fn envelope<T: serde::de::DeserializeOwned>(f: &ActForm) -> Option<Signed<T>> {
    Some(Signed {
        body: serde_json::from_str(&f.body).ok()?,
        signature: f.signature.clone(),
    })
}

pub(super) async fn act(
    State(c): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<ActForm>,
) -> Response {
    let lang = Console::lang(&headers);
    let Some(s) = c.session(&headers) else {
        return c.refused(lang, None, StatusCode::UNAUTHORIZED, Code::Auth, SIGNED_OUT);
    };
    if !csrf_ok(&s, &f.csrf) {
        return c.refused(lang, Some(&s), StatusCode::FORBIDDEN, Code::Request, FORGED);
    }
    let expected = match f.kind.as_str() {
        "consent-grant" | "consent-revoke" => tag::CONSENT,
        "airlock-approve" | "airlock-reject" | "airlock-fetch" => tag::REVIEW,
        "contract-agree" | "contract-finalize" | "contract-terminate" | "contract-offer" => {
            tag::CONTRACT
        }
        "query" => tag::QUERY,
        "udf-approve" => tag::UDF,
        _ => "",
    };
    let msg = if f.tag != expected {
        None
    } else {
        match f.kind.as_str() {
            "consent-grant" | "consent-revoke" => envelope(&f).map(ToNode::Consent),
            "airlock-approve" | "airlock-reject" | "airlock-fetch" => {
                envelope(&f).map(ToNode::AirlockAct)
            }
            "contract-offer" => envelope(&f).map(ToNode::ContractOffer),
            "contract-agree" | "contract-finalize" | "contract-terminate" => {
                envelope(&f).map(ToNode::ContractAct)
            }
            "query" => envelope(&f).map(ToNode::Query),
            "udf-approve" => envelope(&f).map(ToNode::UdfApprove),
            _ => None,
        }
    };
    let Some(msg) = msg else {
        return c.refused(
            lang,
            Some(&s),
            StatusCode::BAD_REQUEST,
            Code::Request,
            "the signed action does not parse",
        );
    };
    let answer = c.ask(&s, msg).await;
    let body = match answer {
        FromNode::Refused {
            code,
            rule,
            audit_seq,
        } => view::refusal(lang, code.as_str(), &rule, audit_seq),
        FromNode::Outcome(o) => view::outcome(lang, &o),
        FromNode::Recorded(r) => done(
            lang,
            &format!("{} {} (#{})", r.action.as_str(), r.scene, r.seq),
        ),
        FromNode::Contract(k) => done(lang, &format!("{} {}", k.id, k.state.as_str())),
        FromNode::Registered(r) => done(
            lang,
            &format!("{} {} ({} #{})", r.scene, r.digest, r.node, r.audit_seq),
        ),
        FromNode::Decided { held, bytes } => {
            let state = done(
                lang,
                &format!(
                    "#{} {} ({} / {})",
                    held.id,
                    held.state.as_str(),
                    held.approvals.len(),
                    held.approvers_needed
                ),
            );
            // The bytes, where the answer shows them (a reviewer, or the
            // requester once released): the outcome they hold.
            let shown = bytes
                .as_deref()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok());
            match shown {
                Some(v) => match serde_json::from_value::<kexin_engine::node::Outcome>(v.clone()) {
                    Ok(o) => html! { (state) (view::outcome(lang, &o)) },
                    Err(_) => html! { (state) (view::json(&v)) },
                },
                None => state,
            }
        }
        _ => view::refusal(lang, Code::Internal.as_str(), "unexpected answer", None),
    };
    c.page(lang, Some(&s), StatusCode::OK, body)
}

fn done(lang: Lang, what: &str) -> Markup {
    html! {
        section {
            h2.ok { (t(lang, "done")) }
            p role="status" { (what) }
            p { a href="/console/home" { (t(lang, "back")) } }
        }
    }
}
