//! The node's web console for individuals, data holders and researchers
//! (`kexin node --console ADDR`).
//!
//! Pages are rendered here (maud escapes every value) and read without
//! script. Signing happens in the browser: the member's key file is read
//! there at sign-in, kept as a non-extractable WebCrypto key, and signs the
//! exact request body each confirmation page shows (`console.js`, served
//! from the node under a strict Content-Security-Policy). So an action from
//! the console is the same signed request the API and the CLI send, checked
//! by the same engine call ([`NodeServer::answer`]); the audit log cannot
//! tell a click from a command.
//!
//! Sign-in is the API's signed request for `POST /console/login` (its
//! nonce is single-use, its time fresh), made by the page's script or by
//! `kexin id login` and pasted. It opens a session: an HttpOnly, Secure,
//! SameSite=Strict cookie that lasts 30 minutes, with a CSRF token that
//! every form carries. Personal data never appears in a URL.
//!
//! Browsers do not take ed25519 server certificates, so the console has its
//! own ECDSA P-256 key (`<node>/console.key`) and self-signed certificate;
//! the node's ed25519 key signs the certificate's key digest, shown at
//! `GET /v1/node` and `GET /console/certificate`, so anyone holding the
//! node's registered key can check it.

mod svg;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ed25519_dalek::Signer;
use kexin_engine::Code;
use kexin_engine::audit::AuditEntry;
use kexin_engine::identity::{QueryBody, RequestBody, Role, Signed, nonce as fresh_nonce, tag};
use kexin_engine::log_view::MAX_PAGE;
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::server::NodeServer;
use super::wire::{FromNode, ToNode};
use view::{Lang, Who, t};

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Sessions a node holds at once; the oldest go first.
const MAX_SESSIONS: usize = 4096;
/// The signed request a sign-in is: `POST` to this target, no body.
pub const LOGIN_TARGET: &str = "/console/login";
/// The largest form the console reads (a query's SQL is at most 16 KiB).
const MAX_FORM: usize = 64 * 1024;
const SESSION_COOKIE: &str = "kexin_session";
const LANG_COOKIE: &str = "kexin_lang";
/// The signature tag of the console certificate's binding.
pub const CONSOLE_CERT_TAG: &str = "kexin/console-certificate/v1";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const JS: &str = include_str!("console/console.js");
const CSS: &str = include_str!("console/console.css");

/// One signed-in member.
#[derive(Debug, Clone)]
struct Session {
    member: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

/// The console's state.
struct Console {
    server: Arc<NodeServer>,
    sessions: Mutex<HashMap<String, Session>>,
}

type Shared = Arc<Console>;

/// The console's key, certificate and the node's signature over the key's
/// digest: `(certificate DER, key PKCS#8, SPKI SHA-256 base64, binding)`.
pub(super) struct ConsoleTls {
    pub cert_der: Vec<u8>,
    pub pkcs8: Vec<u8>,
    pub spki_sha256: String,
    pub binding: String,
}

/// The console's ECDSA P-256 certificate for `names`, from the key kept in
/// `node_dir/console.key` (made on first use, mode 0600), and the node
/// key's signature over `tag ‖ 0x00 ‖ space ‖ 0x00 ‖ node ‖ 0x00 ‖ SPKI
/// SHA-256 (base64)`.
pub(super) fn console_tls(
    server: &NodeServer,
    node_dir: &std::path::Path,
    names: &[String],
) -> Result<ConsoleTls> {
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    let path = node_dir.join("console.key");
    if !path.exists() {
        let key = rcgen::KeyPair::generate().context("an ECDSA P-256 key")?;
        kexin_engine::store::write_private(&path, &key.serialize_der())?;
    }
    let der = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = rcgen::KeyPair::try_from(der.as_slice()).context("console.key")?;
    let spki = key.subject_public_key_info();
    let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&spki));
    let cert = super::http::self_signed(
        &key,
        names,
        &format!("kexin console {}", server.node.name()),
    )?;
    let binding = hex::encode(
        server
            .me
            .sign(&binding_message(
                &server.space.name,
                server.node.name(),
                &spki_sha256,
            ))
            .to_bytes(),
    );
    Ok(ConsoleTls {
        cert_der: cert.der().to_vec(),
        pkcs8: der,
        spki_sha256,
        binding,
    })
}

/// What the node key signs to vouch for the console's certificate key.
pub fn binding_message(space: &str, node: &str, spki_sha256: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for part in [CONSOLE_CERT_TAG, space, node, spki_sha256] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.pop();
    m
}

/// The console's routes.
pub(super) fn router(server: Arc<NodeServer>) -> Router {
    let state: Shared = Arc::new(Console {
        server,
        sessions: Mutex::default(),
    });
    Router::new()
        .route("/", get(|| async { redirect("/console") }))
        .route("/console", get(index))
        .route("/console/", get(index))
        .route(LOGIN_TARGET, post(login))
        .route("/console/logout", post(logout))
        .route("/console/home", get(home))
        .route("/console/prepare", post(prepare))
        .route("/console/act", post(act))
        .route("/console/verify", get(verify))
        .route("/console/lang", get(lang))
        .route("/console/certificate", get(certificate))
        .route(
            "/console/static/console.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .route(
            "/console/static/console.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found").into_response() })
        .layer(axum::middleware::from_fn(same_origin))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Every answer: no caching, no framing, no sniffing, no referrer, and a
/// Content-Security-Policy that allows only the node's own script and
/// style.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A form a browser posts from another origin is refused before anything
/// reads it (browsers send `Origin` with every POST): with the CSRF token
/// and `SameSite=Strict`, this also stops a cross-site sign-in (login
/// CSRF), which has no session yet.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let get = |h| req.headers().get(h).and_then(|v| v.to_str().ok());
        if let Some(origin) = get(header::ORIGIN)
            && get(header::HOST).is_none_or(|host| origin != format!("https://{host}"))
        {
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "KX-REQUEST: a form posted from another origin",
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn html_page(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // A failing system RNG leaves an all-zero token that no session has.
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Constant-time equality of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Console {
    fn node_name(&self) -> &str {
        self.server.node.name()
    }

    fn lang(headers: &HeaderMap) -> Lang {
        Lang::from_cookie(cookie(headers, LANG_COOKIE))
    }

    /// The session the request's cookie names, if it is live.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut all = self.sessions.lock().ok()?;
        match all.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                all.remove(id);
                None
            }
            None => None,
        }
    }

    /// Open a session for `member`; its cookie.
    fn open(&self, member: String, role: Role) -> Option<String> {
        let id = random_hex();
        let mut all = self.sessions.lock().ok()?;
        let now = Instant::now();
        all.retain(|_, s| s.expires > now);
        if all.len() >= MAX_SESSIONS
            && let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
        all.insert(
            id.clone(),
            Session {
                member,
                role,
                csrf: random_hex(),
                expires: now + SESSION_TTL,
            },
        );
        Some(format!(
            "{SESSION_COOKIE}={id}; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
            SESSION_TTL.as_secs()
        ))
    }

    fn page(
        &self,
        lang: Lang,
        who: Option<&Session>,
        status: StatusCode,
        body: Markup,
    ) -> Response {
        let w = who.map(|s| Who {
            member: &s.member,
            role: s.role.as_str(),
            csrf: &s.csrf,
        });
        html_page(status, view::page(lang, self.node_name(), w.as_ref(), body))
    }

    fn refused(
        &self,
        lang: Lang,
        who: Option<&Session>,
        status: StatusCode,
        code: Code,
        rule: &str,
    ) -> Response {
        self.page(
            lang,
            who,
            status,
            view::refusal(lang, code.as_str(), rule, None),
        )
    }

    /// The engine's answer to `msg` from the session's member.
    async fn ask(self: &Arc<Self>, s: &Session, msg: ToNode) -> FromNode {
        let this = Arc::clone(self);
        let (member, role) = (s.member.clone(), s.role);
        tokio::task::spawn_blocking(move || this.server.answer(&member, role.as_str(), msg))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                FromNode::refused(kexin_engine::Error::internal("").as_refusal(), None)
            })
    }
}

/// The form fields every signed-in form carries.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form's CSRF token against the session's: a form from anywhere else
/// (no token, or another) is refused and changes nothing.
fn csrf_ok(s: &Session, token: &str) -> bool {
    !token.is_empty() && same(token, &s.csrf)
}

const FORGED: &str = "the form did not come from this console (its CSRF token is missing or wrong)";
const SIGNED_OUT: &str = "not signed in, or the session ended: sign in again";

async fn index(State(c): State<Shared>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_some() {
        return redirect("/console/home");
    }
    let lang = Console::lang(&headers);
    let body = view::sign_in(lang, &c.server.space.name, c.node_name(), None);
    c.page(lang, None, StatusCode::OK, body)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    proof: String,
}

async fn login(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let lang = Console::lang(&headers);
    let again = |rule: &str| {
        let body = view::sign_in(lang, &c.server.space.name, c.node_name(), Some(rule));
        c.page(lang, None, StatusCode::UNAUTHORIZED, body)
    };
    let Some(env) = super::http::header_envelope::<RequestBody>(f.proof.trim().as_bytes()) else {
        return again("KX-AUTH: the sign-in proof does not parse");
    };
    let b = &env.body;
    if b.method != "POST"
        || b.target != LOGIN_TARGET
        || b.body_sha256 != hex::encode(Sha256::digest(b""))
    {
        return again("KX-AUTH: the proof is not a sign-in to this console");
    }
    let server = Arc::clone(&c.server);
    let member = b.member.clone();
    let checked = tokio::task::spawn_blocking(move || server.node.authenticate_request(&env)).await;
    match checked {
        Ok(Ok(role)) => match c.open(member, role) {
            Some(cookie) => (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "/console/home".to_string()),
                ],
            )
                .into_response(),
            None => again("KX-INTERNAL: no session could be opened"),
        },
        Ok(Err(e)) => {
            let r = e.as_refusal();
            again(&format!("{}: {}", r.code.as_str(), r.rule))
        }
        Err(_) => again("KX-INTERNAL: the sign-in could not be checked"),
    }
}

async fn logout(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let lang = Console::lang(&headers);
    let Some(s) = c.session(&headers) else {
        return redirect("/console");
    };
    if !csrf_ok(&s, &f.csrf) {
        return c.refused(lang, Some(&s), StatusCode::FORBIDDEN, Code::Request, FORGED);
    }
    if let (Some(id), Ok(mut all)) = (cookie(&headers, SESSION_COOKIE), c.sessions.lock()) {
        all.remove(id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{SESSION_COOKIE}=; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age=0"
                ),
            ),
            (header::LOCATION, "/console".to_string()),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LangQuery {
    to: String,
}

async fn lang(Query(q): Query<LangQuery>) -> Response {
    let v = if q.to == "en" { "en" } else { "zh" };
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{LANG_COOKIE}={v}; Path=/console; Secure; SameSite=Strict; Max-Age=31536000"
                ),
            ),
            (header::LOCATION, "/console".to_string()),
        ],
    )
        .into_response()
}

async fn certificate(State(c): State<Shared>) -> Response {
    let body = serde_json::json!({
        "space": c.server.space.name,
        "node": c.node_name(),
        "spki_sha256": c.server.console_spki.get(),
        "binding": c.server.console_binding.get(),
        "tag": CONSOLE_CERT_TAG,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------- pages

async fn home(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let lang = Console::lang(&headers);
    let Some(s) = c.session(&headers) else {
        return redirect("/console");
    };
    let who = Who {
        member: &s.member,
        role: s.role.as_str(),
        csrf: &s.csrf,
    };
    let body = match s.role {
        Role::Individual => individual(&c, lang, &s, &who).await,
        Role::Holder | Role::Operator => holder(&c, lang, &s, &who).await,
        Role::Researcher => researcher(&c, lang, &s, &who).await,
        _ => view::refusal(
            lang,
            Code::Auth.as_str(),
            "this role has no console view",
            None,
        ),
    };
    c.page(lang, Some(&s), StatusCode::OK, body)
}

/// An individual: every scene that may use their records, their consent
/// for each with grant and revoke, and the timeline of uses and receipts.
async fn individual(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
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
                    td { (u.node) " #" (u.audit_seq) }
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
async fn holder(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
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
async fn researcher(c: &Shared, lang: Lang, s: &Session, who: &Who<'_>) -> Markup {
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

/// The holder's verify button: the node's whole log from its folder, as
/// `kexin audit verify --local` checks it.
async fn verify(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let lang = Console::lang(&headers);
    let Some(s) = c.session(&headers) else {
        return redirect("/console");
    };
    if !matches!(s.role, Role::Holder | Role::Operator) {
        return c.refused(
            lang,
            Some(&s),
            StatusCode::FORBIDDEN,
            Code::Auth,
            "the log is verified here by data holders and the operator",
        );
    }
    let dir = c.server.space.dir.join(c.node_name());
    let report = tokio::task::spawn_blocking(move || kexin_engine::store::verify(&dir, None)).await;
    let body = match report {
        Ok(Ok(r)) => html! {
            section {
                h2.ok { (t(lang, "verified")) }
                p { (r.entries) " " (t(lang, "entries")) ", " (t(lang, "root")) " " code { (r.root_hex) } }
                p { a href="/console/home" { (t(lang, "back")) } }
            }
        },
        Ok(Err(e)) => html! {
            section {
                h2.refused { (t(lang, "not_verified")) }
                p role="alert" { (e.to_string()) }
                p { a href="/console/home" { (t(lang, "back")) } }
            }
        },
        Err(_) => view::refusal(
            lang,
            Code::Internal.as_str(),
            "the log could not be read",
            None,
        ),
    };
    c.page(lang, Some(&s), StatusCode::OK, body)
}

// ---------------------------------------------------------------- actions

/// What a prepare form asks for.
#[derive(Debug, Deserialize)]
struct PrepareForm {
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

async fn prepare(
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
struct ActForm {
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

async fn act(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<ActForm>) -> Response {
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

/// The console's address line for `kexin node`: where it listens and the
/// certificate key digest a browser pins
/// (`--ignore-certificate-errors-spki-list` in Chromium).
pub fn announce(node: &str, at: SocketAddr, spki_sha256: &str) -> String {
    format!(
        "kexin node {node} console on https://{at}/console (certificate key sha256 {spki_sha256})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_full_and_cookies_parse() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!csrf_ok(
            &Session {
                member: "m".into(),
                role: Role::Individual,
                csrf: String::new(),
                expires: Instant::now(),
            },
            ""
        ));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("kexin_lang=en; kexin_session=ab12"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("ab12"));
        assert_eq!(Console::lang(&h), Lang::En);
        assert_eq!(cookie(&h, "other"), None);
    }

    #[test]
    fn the_binding_names_the_space_the_node_and_the_key() {
        let m = binding_message("s", "h1", "K=");
        assert_eq!(m, b"kexin/console-certificate/v1\0s\0h1\0K=".to_vec());
        assert_ne!(m, binding_message("s", "h2", "K="));
    }
}
