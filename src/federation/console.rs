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

mod actions;
mod roles;
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
use kexin_engine::identity::{RequestBody, Role};
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::server::NodeServer;
use super::wire::{FromNode, ToNode};
use view::{Lang, Who, t};

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Sessions one member holds at once; their oldest goes first.
const MAX_SESSIONS_PER_MEMBER: usize = 8;
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
    sessions: Sessions,
}

/// The signed-in members, by session identifier (random, 256 bits).
#[derive(Default)]
struct Sessions(Mutex<HashMap<String, Session>>);

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
        sessions: Sessions::default(),
    });
    Router::new()
        .route("/", get(|| async { redirect("/console") }))
        .route("/console", get(index))
        .route("/console/", get(index))
        .route(LOGIN_TARGET, post(login))
        .route("/console/logout", post(logout))
        .route("/console/home", get(home))
        .route("/console/prepare", post(actions::prepare))
        .route("/console/act", post(actions::act))
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
        self.sessions.live(cookie(headers, SESSION_COOKIE)?)
    }

    /// Open a session for `member`; its cookie.
    fn open(&self, member: String, role: Role) -> Option<String> {
        self.sessions.open(member, role)
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

impl Sessions {
    /// Session `id`, if it is live.
    fn live(&self, id: &str) -> Option<Session> {
        let mut all = self.0.lock().ok()?;
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
        let mut all = self.0.lock().ok()?;
        let now = Instant::now();
        all.retain(|_, s| s.expires > now);
        // A member's own sessions are capped first: one member signing in
        // again and again ends their own oldest session, not others'.
        let mine: Vec<(String, Instant)> = all
            .iter()
            .filter(|(_, s)| s.member == member)
            .map(|(k, s)| (k.clone(), s.expires))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_MEMBER
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, e)| *e)
        {
            all.remove(oldest);
        }
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

    /// End session `id`.
    fn end(&self, id: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(id);
        }
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
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        c.sessions.end(id);
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
        Role::Individual => roles::individual(&c, lang, &s, &who).await,
        Role::Holder | Role::Operator => roles::holder(&c, lang, &s, &who).await,
        Role::Researcher => roles::researcher(&c, lang, &s, &who).await,
        _ => view::refusal(
            lang,
            Code::Auth.as_str(),
            "this role has no console view",
            None,
        ),
    };
    c.page(lang, Some(&s), StatusCode::OK, body)
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
    fn one_member_signing_in_again_and_again_ends_only_their_own_sessions() {
        let c = Sessions::default();
        let other = c.open("bob".into(), Role::Researcher).expect("bob");
        let mut alice = Vec::new();
        for _ in 0..(MAX_SESSIONS_PER_MEMBER + 5) {
            alice.push(c.open("alice".into(), Role::Researcher).expect("alice"));
        }
        let all = c.0.lock().expect("lock");
        assert_eq!(
            all.values().filter(|s| s.member == "alice").count(),
            MAX_SESSIONS_PER_MEMBER
        );
        let id = |cookie: &str| {
            cookie
                .split(';')
                .next()
                .and_then(|kv| kv.split_once('='))
                .map(|(_, v)| v.to_string())
                .expect("id")
        };
        assert!(all.contains_key(&id(&other)));
        assert!(all.contains_key(&id(alice.last().expect("last"))));
    }

    #[test]
    fn the_binding_names_the_space_the_node_and_the_key() {
        let m = binding_message("s", "h1", "K=");
        assert_eq!(m, b"kexin/console-certificate/v1\0s\0h1\0K=".to_vec());
        assert_ne!(m, binding_message("s", "h2", "K="));
    }
}
