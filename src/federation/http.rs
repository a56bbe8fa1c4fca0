//! The node's HTTP JSON API (`kexin node --http ADDR`): the governance
//! actions of every role, a researcher's query, and the node's checkpoint
//! and audit inclusion proofs for anyone. Each call is answered by the same
//! [`NodeServer::answer`] a member's peer link is, so the rules, the audit
//! entries and the JSON shapes are those of the CLI.
//!
//! - **Transport.** HTTP/1.1 over TLS 1.3 only. The certificate is
//!   self-signed by the node's certified ed25519 key ([`certificate`]):
//!   clients pin that key, not a certificate authority.
//! - **Who is calling.** A call names its member in the `Kexin-Request`
//!   header: a [`RequestBody`] (this space and node, the method, the path
//!   with its query string, the SHA-256 of the body, a fresh nonce and the
//!   time) signed with the member's key under `kexin/request/v1`, as
//!   base64url JSON. The node checks it against the member's certificate in
//!   the registry (certificates issued after start-up work at once), its
//!   freshness, and its nonce (kept durably: a replayed call is refused).
//!   What a state-changing call asks for (a consent receipt, a contract
//!   action, an airlock decision, a UDF approval) is signed separately by
//!   the same member and checked, and audited when refused, by the engine.
//! - **Anyone** may read the node's identity, its latest checkpoint, the
//!   inclusion proof of an audit entry (its leaf hash; the entry itself
//!   only to those the engine shows it to) and this API's OpenAPI 3.1
//!   document, without signing.
//! - **Answers.** 200 with the JSON the CLI prints under `--format json`;
//!   a refusal is 403 with `{code, rule, audit_seq}`; an unsigned or badly
//!   signed call 401 (`KX-AUTH`); a malformed call 400, 404, 405 or 413
//!   (`KX-REQUEST`). A query's outcome is 200 whatever its decision, as
//!   `kexin query` prints it. Nothing in an error depends on data.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ed25519_dalek::SigningKey;
use kexin_engine::identity::{MAX_ENVELOPE_BYTES, RequestBody, Role, Signed};
use kexin_engine::{Code, Refusal};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::admission::HANDSHAKE_TIMEOUT;
use super::server::NodeServer;
use super::wire::{FromNode, ToNode};

/// The header that carries a call's signature.
pub const REQUEST_HEADER: &str = "kexin-request";
/// The largest body of a call (a signed envelope).
const MAX_BODY: usize = MAX_ENVELOPE_BYTES;
/// The largest body of a UDF approval: the module (8 MiB, the sandbox's
/// limit) in base64, with its approval.
const MAX_UDF_BODY: usize = 12 << 20;
/// Calls served at once; more connections are closed at once.
const MAX_API_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers, or its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The fixed refusals of the API layer.
const UNSIGNED: Refusal = Refusal::new(
    Code::Auth,
    "the call is not signed (no Kexin-Request header)",
);
const BAD_SIGNATURE_HEADER: Refusal = Refusal::new(
    Code::Auth,
    "the Kexin-Request header is not a signed request",
);
const OTHER_CALL: Refusal = Refusal::new(
    Code::Auth,
    "the signature is for another call (method, target or body)",
);
const TOO_LARGE: Refusal = Refusal::new(Code::Request, "the body is over the limit for this call");
const SLOW_BODY: Refusal = Refusal::new(Code::Request, "the body did not arrive in time");
const MALFORMED: Refusal = Refusal::new(Code::Request, "the body or query string does not parse");
const NO_SUCH_CALL: Refusal = Refusal::new(Code::Request, "no such call");
const NO_SUCH_METHOD: Refusal = Refusal::new(Code::Request, "the call takes another method");

/// The API's state: the node it serves.
#[derive(Clone, Debug)]
struct Api(Arc<NodeServer>);

/// A JSON answer with the headers every answer carries.
fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn refused(status: StatusCode, r: Refusal) -> Response {
    json_response(
        status,
        &json!({"code": r.code, "rule": r.rule, "audit_seq": null}),
    )
}

/// A call turned away before or instead of an answer: the status and the
/// fixed refusal.
#[derive(Debug, Clone, Copy)]
struct Reject(StatusCode, Refusal);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        refused(self.0, self.1)
    }
}

/// A node's answer as HTTP: the message's content, 403 for a refusal.
fn respond(answer: &FromNode) -> Response {
    let internal = || refused(StatusCode::INTERNAL_SERVER_ERROR, internal_refusal());
    let Ok(Value::Object(m)) = serde_json::to_value(answer) else {
        return internal();
    };
    let Some((kind, inner)) = m.into_iter().next() else {
        return internal();
    };
    let status = if kind == "refused" {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    json_response(status, &inner)
}

fn internal_refusal() -> Refusal {
    kexin_engine::Error::internal("").as_refusal()
}

/// A signed envelope carried in a header (HTTP `Kexin-Request`, Flight
/// `kexin-query`): base64url without padding of its JSON, size-limited.
pub(super) fn header_envelope<T: serde::Serialize + DeserializeOwned>(
    value: &[u8],
) -> Option<Signed<T>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    Signed::from_json(std::str::from_utf8(&bytes).ok()?, Code::Auth).ok()
}

/// A call as it arrived: its head and its body, read within the limits.
struct Call {
    parts: Parts,
    body: Bytes,
}

impl Call {
    async fn read(req: Request, limit: usize) -> Result<Call, Reject> {
        let (parts, body) = req.into_parts();
        // A body announced over the limit is turned away unread.
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(Reject(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE));
        }
        let body = match tokio::time::timeout(READ_TIMEOUT, axum::body::to_bytes(body, limit)).await
        {
            Err(_) => return Err(Reject(StatusCode::REQUEST_TIMEOUT, SLOW_BODY)),
            Ok(Err(_)) => return Err(Reject(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE)),
            Ok(Ok(b)) => b,
        };
        Ok(Call { parts, body })
    }

    fn target(&self) -> &str {
        self.parts.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The signed request in the header, checked against this call (the
    /// engine checks the signer, freshness and nonce).
    fn signature(&self) -> Result<Option<Signed<RequestBody>>, Reject> {
        let Some(h) = self.parts.headers.get(REQUEST_HEADER) else {
            return Ok(None);
        };
        let env: Signed<RequestBody> = header_envelope(h.as_bytes())
            .ok_or(Reject(StatusCode::UNAUTHORIZED, BAD_SIGNATURE_HEADER))?;
        let b = &env.body;
        if b.method != self.parts.method.as_str()
            || b.target != self.target()
            || b.body_sha256 != hex::encode(Sha256::digest(&self.body))
        {
            return Err(Reject(StatusCode::UNAUTHORIZED, OTHER_CALL));
        }
        Ok(Some(env))
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, Reject> {
        serde_json::from_slice(&self.body).map_err(|_| Reject(StatusCode::BAD_REQUEST, MALFORMED))
    }

    fn query<T: DeserializeOwned>(&self) -> Result<T, Reject> {
        axum::extract::Query::<T>::try_from_uri(&self.parts.uri)
            .map(|q| q.0)
            .map_err(|_| Reject(StatusCode::BAD_REQUEST, MALFORMED))
    }
}

/// Who calls: a certified member and their role, or no one (on the calls
/// anyone may make).
type Caller = Option<(String, Role)>;

impl Api {
    /// Read a call and check its signature (required unless `anyone` may
    /// call), then run `then` with the caller, off the async workers. An
    /// outsider learns nothing about the body: who calls is checked first.
    async fn call(
        &self,
        req: Request,
        limit: usize,
        anyone: bool,
        then: impl FnOnce(&NodeServer, Caller, &Call) -> Response + Send + 'static,
    ) -> Response {
        let call = match Call::read(req, limit).await {
            Ok(c) => c,
            Err(r) => return r.into_response(),
        };
        let env = match call.signature() {
            Ok(None) if !anyone => return refused(StatusCode::UNAUTHORIZED, UNSIGNED),
            Ok(env) => env,
            Err(r) => return r.into_response(),
        };
        let server = Arc::clone(&self.0);
        self.blocking(move || {
            let caller = match env {
                None => None,
                Some(env) => match server.node.authenticate_request(&env) {
                    Ok(role) => Some((env.body.member, role)),
                    Err(e) => {
                        tracing::info!(target: "kexin::api", "call refused: {}", e.as_refusal().rule);
                        return refused(StatusCode::UNAUTHORIZED, e.as_refusal());
                    }
                },
            };
            then(&server, caller, &call)
        })
        .await
    }

    /// Answer a signed call as for the member's peer link, with the message
    /// `build` makes of it.
    async fn signed(
        &self,
        req: Request,
        limit: usize,
        build: impl FnOnce(&Call) -> Result<ToNode, Reject> + Send + 'static,
    ) -> Response {
        self.call(req, limit, false, move |server, caller, call| {
            let Some((member, role)) = caller else {
                return refused(StatusCode::UNAUTHORIZED, UNSIGNED);
            };
            match build(call) {
                Ok(msg) => answer(server, &member, role, msg),
                Err(r) => r.into_response(),
            }
        })
        .await
    }

    /// Run engine work off the async workers.
    async fn blocking(&self, f: impl FnOnce() -> Response + Send + 'static) -> Response {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|_| refused(StatusCode::INTERNAL_SERVER_ERROR, internal_refusal()))
    }
}

fn answer(server: &NodeServer, member: &str, role: Role, msg: ToNode) -> Response {
    match server.answer(member, role.as_str(), msg) {
        Ok(a) => respond(&a),
        Err(e) => {
            tracing::warn!(target: "kexin::api", "call failed: {e:#}");
            refused(StatusCode::INTERNAL_SERVER_ERROR, internal_refusal())
        }
    }
}

// ------------------------------------------------------------- the calls

/// A refusal: the fixed code, the rule that fired, and the audit entry
/// that recorded it (when one did).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code, reason = "documents the JSON shape of a refusal")]
struct RefusalBody {
    /// `KX-…`
    code: String,
    rule: String,
    audit_seq: Option<u64>,
}

/// Filters of the consent receipts listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ConsentsQuery {
    /// A person (data holders and the operator; an individual sees only
    /// their own receipts).
    person: Option<String>,
    scene: Option<String>,
}

/// Which page of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// The tree size of the checkpoint to read under (default: the latest).
    size: Option<u64>,
    /// The first entry's sequence number (default 1).
    from: Option<u64>,
    /// At most this many leaves (default and most: 4096).
    limit: Option<u64>,
}

/// Filters of the modules listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct SceneQuery {
    scene: Option<String>,
}

/// Filters of the DP ledger rows listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct BudgetsQuery {
    /// A researcher (data holders and the operator; a researcher sees only
    /// their own rows).
    actor: Option<String>,
    scene: Option<String>,
}

/// The period of an accounting statement (UTC days, inclusive).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PeriodQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A UDF submission with its module.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UdfSubmission {
    submission: Signed<kexin_engine::identity::UdfSubmissionBody>,
    /// The module's bytes, base64.
    module: String,
}

/// A UDF approval with its module.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UdfUpload {
    approval: Signed<kexin_engine::identity::UdfApprovalBody>,
    /// The module's bytes, base64.
    module: String,
}

/// The node's identity.
#[utoipa::path(get, path = "/v1/node", tag = "anyone",
    responses((status = 200, description = "The space, the node, its member, its certified public key (hex), its TLS certificate (PEM) and, when the web console serves, `console: {spki_sha256, binding}`: its certificate key digest and the node key's signature over it (docs/console.md)")))]
async fn node_info(State(api): State<Api>) -> Response {
    let s = &api.0;
    json_response(
        StatusCode::OK,
        &json!({
            "space": s.space.name,
            "node": s.node.name(),
            "member": s.cfg.addr(s.node.name()).map(|a| a.member.clone()).ok(),
            "public_key": hex::encode(s.me.verifying_key().to_bytes()),
            "certificate_pem": s.api_certificate_pem(),
            "console": s.console_spki.get().map(|spki| json!({
                "spki_sha256": spki,
                "binding": s.console_binding.get(),
            })),
        }),
    )
}

/// The node's latest signed checkpoint.
#[utoipa::path(get, path = "/v1/checkpoint", tag = "anyone",
    responses((status = 200, description = "`{note, verifier}`: the latest checkpoint as a signed note (C2SP tlog-checkpoint), and the note verifier key; `note` is null before the first entry")))]
async fn checkpoint(State(api): State<Api>) -> Response {
    let server = Arc::clone(&api.0);
    api.blocking(move || match server.node.checkpoint_for_witnesses() {
        Ok(Some((note, verifier))) => {
            json_response(StatusCode::OK, &json!({"note": note, "verifier": verifier}))
        }
        Ok(None) => json_response(StatusCode::OK, &json!({"note": null, "verifier": null})),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e.as_refusal()),
    })
    .await
}

/// The inclusion proof of an audit entry (RFC 9162) under the node's
/// latest checkpoint.
#[utoipa::path(get, path = "/v1/audit/{seq}/proof", tag = "anyone",
    params(("seq" = u64, Path, description = "The entry's sequence number")),
    responses(
        (status = 200, description = "`{proof, verifier, vouch}`: the entry (to its actor, the node's data holders and the operator when signed; else its leaf hash only), the audit path and the signed checkpoint"),
        (status = 403, body = RefusalBody)),
    security((), ("kexin_request" = [])))]
async fn proof(State(api): State<Api>, Path(seq): Path<u64>, req: Request) -> Response {
    api.call(req, MAX_BODY, true, move |server, caller, _| {
        // Any certified role may ask; an anonymous caller reads as nobody.
        let member = caller.map(|(m, _)| m).unwrap_or_default();
        answer(
            server,
            &member,
            Role::Researcher,
            ToNode::Prove { seq, size: None },
        )
    })
    .await
}

/// One page of the node's audit log under one signed checkpoint: every
/// leaf hash of the range, and the entries of it the caller may see.
#[utoipa::path(get, path = "/v1/audit", tag = "anyone",
    params(LogQuery),
    responses(
        (status = 200, description = "`{page: {checkpoint, size, from, leaves, entries}, verifier}`: the leaf hashes (hex) of entries `from`… (at most `limit`, 4096 at most) under the checkpoint of tree size `size` (the latest when absent), and the entries of that range the caller may see as JSON exactly as hashed (to its actor, the node's data holders and the operator when signed; none when anonymous). Read pages under one `size` until `from + len(leaves) > size`, then recompute the root (RFC 9162) and compare it with the signed checkpoint"),
        (status = 403, body = RefusalBody)),
    security((), ("kexin_request" = [])))]
async fn audit_log(State(api): State<Api>, req: Request) -> Response {
    api.call(req, MAX_BODY, true, move |server, caller, call| {
        let q = match call.query::<LogQuery>() {
            Ok(q) => q,
            Err(r) => return r.into_response(),
        };
        let member = caller.map(|(m, _)| m).unwrap_or_default();
        let msg = ToNode::AuditLog {
            size: q.size,
            from: q.from.unwrap_or(1),
            limit: q.limit.unwrap_or(kexin_engine::log_view::MAX_PAGE),
        };
        answer(server, &member, Role::Researcher, msg)
    })
    .await
}

/// The space's scenes: what each may be used for and by whom (what an
/// individual consents to).
#[utoipa::path(get, path = "/v1/scenes", tag = "individual",
    responses((status = 200, description = "Scenes in name order: purpose (text, Chinese text, DUO-style code), requester, datasets, whether consent is required, validity, release mode, federated"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn scenes(State(api): State<Api>, req: Request) -> Response {
    api.call(req, MAX_BODY, false, |server, _, _| {
        let list: Vec<Value> = server
            .space
            .scenes
            .values()
            .map(|sc| {
                json!({
                    "name": sc.name,
                    "purpose": sc.purpose,
                    "purpose_zh": sc.purpose_zh,
                    "purpose_code": sc.purpose_code.code(),
                    "requester": sc.requester,
                    "datasets": sc.datasets,
                    "consent_required": sc.consent == kexin_engine::policy::ConsentMode::Required,
                    "valid_from": sc.valid_from,
                    "valid_to": sc.valid_to,
                    "release": sc.release,
                    "federated": sc.federated,
                })
            })
            .collect();
        json_response(StatusCode::OK, &Value::Array(list))
    })
    .await
}

/// A researcher's query on this node.
#[utoipa::path(post, path = "/v1/queries", tag = "researcher",
    request_body(description = "A signed query (`kexin/query-request/v1`), as `kexin query` signs it"),
    responses((status = 200, description = "The outcome, as `kexin query --format json` prints it (released, held or refused)"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn query(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::Query))
        .await
}

/// The contracts on this node the caller may see.
#[utoipa::path(get, path = "/v1/contracts", tag = "governance",
    responses((status = 200, description = "Contracts, oldest first"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn contracts(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |_| Ok(ToNode::Contracts)).await
}

/// A data holder's contract offer.
#[utoipa::path(post, path = "/v1/contracts", tag = "governance",
    request_body(description = "Signed terms (`kexin/contract/v1`), signed by the calling holder"),
    responses((status = 200, description = "The contract as offered"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn contract_offer(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::ContractOffer))
        .await
}

/// A contract action: agree, finalize or terminate.
#[utoipa::path(post, path = "/v1/contracts/actions", tag = "governance",
    request_body(description = "A signed action (`kexin/contract/v1`), signed by the caller"),
    responses((status = 200, description = "The contract after the action"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn contract_act(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::ContractAct))
        .await
}

/// The disputes on this node the caller may see.
#[utoipa::path(get, path = "/v1/disputes", tag = "governance",
    responses((status = 200, description = "Disputes, oldest first: all of them for the node's data holders and the operator, else those over entries the caller is a party to"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn disputes(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |_| Ok(ToNode::Disputes)).await
}

/// A party opens a dispute over an audit entry.
#[utoipa::path(post, path = "/v1/disputes", tag = "governance",
    request_body(description = "A signed opening (`kexin/dispute/v1`): {space, node, seq, member, reason, nonce, time}, signed by the caller"),
    responses((status = 200, description = "The dispute as recorded"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn dispute_open(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::DisputeOpen))
        .await
}

/// A dispute's resolution: upheld, dismissed or withdrawn.
#[utoipa::path(post, path = "/v1/disputes/resolutions", tag = "governance",
    request_body(description = "A signed resolution (`kexin/dispute/v1`): {space, node, dispute, member, outcome, note, nonce, time}, signed by the caller"),
    responses((status = 200, description = "The dispute after the resolution"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn dispute_resolve(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::DisputeResolve))
        .await
}

/// The held results the caller may see.
#[utoipa::path(get, path = "/v1/airlock", tag = "governance",
    responses((status = 200, description = "Held results, oldest first"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn airlock(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |_| Ok(ToNode::Airlock)).await
}

/// An airlock decision: approve, reject or fetch.
#[utoipa::path(post, path = "/v1/airlock/decisions", tag = "governance",
    request_body(description = "A signed decision (`kexin/airlock-decision/v1`), signed by the caller"),
    responses((status = 200, description = "`{held, bytes}`: the held result after the decision, with its bytes where they are shown"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn airlock_act(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::AirlockAct))
        .await
}

/// A person's consent receipt (grant or revoke).
#[utoipa::path(post, path = "/v1/consents", tag = "individual",
    request_body(description = "A signed receipt (`kexin/consent-receipt/v1`), signed by the calling person"),
    responses((status = 200, description = "The receipt as the registry recorded it"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn consent(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::Consent))
        .await
}

/// Consent receipts on record.
#[utoipa::path(get, path = "/v1/consents", tag = "individual",
    params(ConsentsQuery),
    responses((status = 200, description = "Receipts, in commit order"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn consents(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| {
        c.query::<ConsentsQuery>().map(|q| ToNode::Consents {
            person: q.person,
            scene: q.scene,
        })
    })
    .await
}

/// Every audited use of the calling person's records.
#[utoipa::path(get, path = "/v1/history", tag = "individual",
    responses((status = 200, description = "Uses, oldest first"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn history(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |_| Ok(ToNode::History)).await
}

/// A data holder's approval of a WebAssembly module for a scene.
#[utoipa::path(post, path = "/v1/udfs", tag = "governance",
    request_body(description = "`{approval, module}`: a signed approval (`kexin/udf-approval/v1`) by the caller and the module's bytes in base64"),
    responses((status = 200, description = "The registration"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn udf_register(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_UDF_BODY, |c| {
        c.json::<UdfUpload>().map(|u| ToNode::UdfRegister {
            approval: u.approval,
            module: u.module,
        })
    })
    .await
}

/// A researcher's submission of a WebAssembly module for review.
#[utoipa::path(post, path = "/v1/udfs/submissions", tag = "researcher",
    request_body(description = "`{submission, module}`: a signed submission (`kexin/udf-submission/v1`) by the caller and the module's bytes in base64"),
    responses((status = 200, description = "The submission: scene, digest, the functions its manifest declares, audit entry"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn udf_submit(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_UDF_BODY, |c| {
        c.json::<UdfSubmission>().map(|u| ToNode::UdfSubmit {
            submission: u.submission,
            module: u.module,
        })
    })
    .await
}

/// The modules submitted on this node the caller may see.
#[utoipa::path(get, path = "/v1/udfs/submissions", tag = "governance",
    params(SceneQuery),
    responses((status = 200, description = "Submissions, oldest first: all for the node's data holders and the operator, a researcher's own for a researcher; each with its digest, functions and whether it is approved"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn udf_submissions(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| {
        c.query::<SceneQuery>()
            .map(|q| ToNode::UdfSubmissions { scene: q.scene })
    })
    .await
}

/// A data holder's approval of a submitted module (by its digest).
#[utoipa::path(post, path = "/v1/udfs/approvals", tag = "governance",
    request_body(description = "A signed approval (`kexin/udf-approval/v1`) by the caller of the submitted module's digest"),
    responses((status = 200, description = "The registration"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn udf_approve(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| c.json().map(ToNode::UdfApprove))
        .await
}

/// The modules approved on this node.
#[utoipa::path(get, path = "/v1/udfs", tag = "governance",
    params(SceneQuery),
    responses((status = 200, description = "Approved modules"), (status = 401, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn udfs(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| {
        c.query::<SceneQuery>()
            .map(|q| ToNode::Udfs { scene: q.scene })
    })
    .await
}

/// The DP ledger rows the caller may see.
#[utoipa::path(get, path = "/v1/budgets", tag = "researcher",
    params(BudgetsQuery),
    responses((status = 200, description = "Ledger rows: spent and remaining ε per researcher and scene"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn budgets(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| {
        c.query::<BudgetsQuery>().map(|q| ToNode::Budgets {
            actor: q.actor,
            scene: q.scene,
        })
    })
    .await
}

/// A signed accounting statement of what this node answered.
#[utoipa::path(get, path = "/v1/accounting/statement", tag = "governance",
    params(PeriodQuery),
    responses((status = 200, description = "`{statement, vouch}`: the statement signed with the node's member key (`kexin/statement/v1`), per requester, scene and contract; every requester for the node's data holders and the operator, their own for a researcher"), (status = 403, body = RefusalBody)),
    security(("kexin_request" = [])))]
async fn statement(State(api): State<Api>, req: Request) -> Response {
    api.signed(req, MAX_BODY, |c| {
        c.query::<PeriodQuery>().map(|q| ToNode::Statement {
            from: q.from,
            to: q.to,
        })
    })
    .await
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "anyone",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")))]
async fn openapi_doc() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(openapi()).unwrap_or(Value::Null),
    )
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "kexin_request",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Kexin-Request",
                "base64url (no padding) of a signed request: {body: {space, node, member, \
                 method, target, body_sha256, nonce, time}, signature} with the ed25519 \
                 signature over `kexin/request/v1` ‖ 0x00 ‖ the body's JSON",
            ))),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "kexin node API",
        description = "Governance for individuals, data holders and researchers; checkpoints and inclusion proofs for anyone. Every call but those tagged `anyone` is signed (`Kexin-Request`); state-changing calls also carry the engine's signed body for the action."
    ),
    paths(
        node_info, checkpoint, proof, audit_log, openapi_doc, scenes, query, contracts, contract_offer,
        contract_act, airlock, airlock_act, consent, consents, history, udf_register, udfs,
        udf_submit, udf_submissions, udf_approve, budgets, disputes, dispute_open, dispute_resolve, statement
    ),
    components(schemas(RefusalBody)),
    modifiers(&Security)
)]
struct ApiDoc;

/// The API's OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Every route the API serves, as (method, path template): the router and
/// the OpenAPI document are both checked against it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/node"),
    ("GET", "/v1/checkpoint"),
    ("GET", "/v1/audit/{seq}/proof"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/scenes"),
    ("POST", "/v1/queries"),
    ("GET", "/v1/contracts"),
    ("POST", "/v1/contracts"),
    ("POST", "/v1/contracts/actions"),
    ("GET", "/v1/airlock"),
    ("POST", "/v1/airlock/decisions"),
    ("GET", "/v1/consents"),
    ("POST", "/v1/consents"),
    ("GET", "/v1/history"),
    ("GET", "/v1/udfs"),
    ("POST", "/v1/udfs"),
    ("GET", "/v1/udfs/submissions"),
    ("POST", "/v1/udfs/submissions"),
    ("POST", "/v1/udfs/approvals"),
    ("GET", "/v1/budgets"),
    ("GET", "/v1/disputes"),
    ("POST", "/v1/disputes"),
    ("POST", "/v1/disputes/resolutions"),
    ("GET", "/v1/accounting/statement"),
];

fn router(server: Arc<NodeServer>) -> Router {
    Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/audit/{seq}/proof", get(proof))
        .route("/v1/audit", get(audit_log))
        .route("/v1/openapi.json", get(openapi_doc))
        .route("/v1/scenes", get(scenes))
        .route("/v1/queries", post(query))
        .route("/v1/contracts", get(contracts).post(contract_offer))
        .route("/v1/contracts/actions", post(contract_act))
        .route("/v1/airlock", get(airlock))
        .route("/v1/airlock/decisions", post(airlock_act))
        .route("/v1/consents", get(consents).post(consent))
        .route("/v1/history", get(history))
        .route("/v1/udfs", get(udfs).post(udf_register))
        .route(
            "/v1/udfs/submissions",
            get(udf_submissions).post(udf_submit),
        )
        .route("/v1/udfs/approvals", post(udf_approve))
        .route("/v1/budgets", get(budgets))
        .route("/v1/disputes", get(disputes).post(dispute_open))
        .route("/v1/disputes/resolutions", post(dispute_resolve))
        .route("/v1/accounting/statement", get(statement))
        .fallback(|| async { refused(StatusCode::NOT_FOUND, NO_SUCH_CALL) })
        .method_not_allowed_fallback(|| async {
            refused(StatusCode::METHOD_NOT_ALLOWED, NO_SUCH_METHOD)
        })
        // The body limits are the calls' own (read in `Call::read`).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(Api(server))
}

// ------------------------------------------------------- TLS and serving

/// The node's self-signed X.509 certificate over its ed25519 key, for
/// `names` (DNS names or IP addresses), with its key as PKCS#8. The
/// certificate is the same for the same key and names (fixed serial and
/// validity, deterministic signature), so a client may also pin its bytes.
pub fn certificate(
    me: &SigningKey,
    node: &str,
    names: &[String],
) -> Result<(String, Vec<u8>, Vec<u8>)> {
    let pkcs8 = crate::net::pkcs8(me);
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).context("the node key as PKCS#8")?;
    let cert = self_signed(&key, names, &format!("kexin node {node}"))?;
    Ok((cert.pem(), cert.der().to_vec(), pkcs8))
}

/// A certificate for `names` self-signed by `key`, named `common_name`,
/// valid 2025–2125, its serial taken from the key: the same certificate
/// for the same key and names.
pub(super) fn self_signed(
    key: &rcgen::KeyPair,
    names: &[String],
    common_name: &str,
) -> Result<rcgen::Certificate> {
    use rcgen::PublicKeyData as _;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    let serial = Sha256::digest(key.subject_public_key_info());
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..16]));
    params.self_signed(key).context("self-signing")
}

/// The names the API's certificate is for: the loopback names, and the
/// address the API listens on when it is a specific one.
pub(super) fn certificate_names(at: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !at.ip().is_unspecified() && !at.ip().is_loopback() {
        names.push(at.ip().to_string());
    }
    names
}

/// TLS 1.3 with the node's certificate, announcing `alpn`.
pub(super) fn tls_config(
    cert_der: Vec<u8>,
    pkcs8: Vec<u8>,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
        )?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// Connections one address may hold open on a front end at once: one
/// place cannot take every slot (the TLS handshake authenticates no one on
/// these ports; calls are signed inside).
pub const MAX_PER_SOURCE: usize = 64;

/// One connection's place on a front end: a slot of the port's total and
/// one of its address's; both are given back when it drops.
#[derive(Debug)]
pub struct Slot {
    _total: tokio::sync::OwnedSemaphorePermit,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Slot {
    fn take(
        total: &Arc<tokio::sync::Semaphore>,
        sources: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        source: IpAddr,
    ) -> Option<Slot> {
        let mut open = sources.lock().ok()?;
        let n = open.entry(source).or_default();
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        let permit = Arc::clone(total).try_acquire_owned().ok()?;
        *n += 1;
        Some(Slot {
            _total: permit,
            sources: Arc::clone(sources),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.sources.lock()
            && let Some(n) = open.get_mut(&self.source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The node's front ends (the HTTP API, Flight SQL) on their own runtime,
/// so the engine's stays free for queries; they stop when this is dropped.
#[derive(Debug)]
pub struct ApiServer {
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Calls in flight commit before they answer; give them time.
            rt.shutdown_timeout(super::admission::DRAIN_TIMEOUT);
        }
    }
}

impl NodeServer {
    /// The API certificate's PEM, once the API is serving.
    pub(super) fn api_certificate_pem(&self) -> Option<String> {
        self.api_cert.get().cloned()
    }

    /// Serve the HTTP API on `http` and Flight SQL on `flight` (either may
    /// be absent) until the returned handle is dropped or the node stops.
    pub fn serve_fronts(
        self: &Arc<Self>,
        http: Option<std::net::TcpListener>,
        flight: Option<std::net::TcpListener>,
    ) -> Result<ApiServer> {
        self.serve_fronts_with(http, flight, None)
    }

    /// [`NodeServer::serve_fronts`], and the web console on `console`.
    pub fn serve_fronts_with(
        self: &Arc<Self>,
        http: Option<std::net::TcpListener>,
        flight: Option<std::net::TcpListener>,
        console: Option<std::net::TcpListener>,
    ) -> Result<ApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kexin-api")
            .enable_all()
            .build()?;
        if let Some(l) = http {
            self.serve_http(&rt, l)?;
        }
        if let Some(l) = flight {
            self.serve_flight(&rt, l)?;
        }
        if let Some(l) = console {
            self.serve_console(&rt, l)?;
        }
        Ok(ApiServer { rt: Some(rt) })
    }

    /// The console certificate key's SHA-256 (base64), once it serves.
    pub fn console_spki_sha256(&self) -> Option<String> {
        self.console_spki.get().cloned()
    }

    fn serve_console(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
    ) -> Result<()> {
        let at = listener.local_addr()?;
        let node_dir = self.space.dir.join(self.node.name());
        let c = super::console::console_tls(self, &node_dir, &certificate_names(at))?;
        let _ = self.console_spki.set(c.spki_sha256);
        let _ = self.console_binding.set(c.binding);
        let tls = tokio_rustls::TlsAcceptor::from(tls_config(c.cert_der, c.pkcs8, b"http/1.1")?);
        let app = super::console::router(Arc::clone(self));
        self.serve_app(rt, listener, tls, app)
    }

    fn serve_http(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
    ) -> Result<()> {
        let at = listener.local_addr()?;
        let node = self.node.name().to_string();
        let (pem, der, pkcs8) = certificate(&self.me, &node, &certificate_names(at))?;
        let _ = self.api_cert.set(pem);
        let tls = tokio_rustls::TlsAcceptor::from(tls_config(der, pkcs8, b"http/1.1")?);
        self.serve_app(rt, listener, tls, router(Arc::clone(self)))
    }

    /// Serve `app` over HTTP/1.1 on TLS connections accepted by
    /// [`NodeServer::accept_tls`].
    fn serve_app(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        app: Router,
    ) -> Result<()> {
        self.accept_tls(
            rt,
            listener,
            tls,
            MAX_API_CONNECTIONS,
            move |stream, slot| {
                let app = app.clone();
                async move {
                    let _slot = slot;
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .max_buf_size(64 * 1024)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "kexin::api", "connection closed: {e}");
                    }
                }
            },
        )
    }

    /// Accept TLS connections on `listener` until the node stops: at most
    /// `max` open at once and [`MAX_PER_SOURCE`] from one address (any more
    /// are closed at once), each handshake within [`HANDSHAKE_TIMEOUT`],
    /// then `serve` with the connection and its slot (free again when
    /// `serve` drops it).
    pub(super) fn accept_tls<F, Fut>(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        max: usize,
        serve: F,
    ) -> Result<()>
    where
        F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Slot) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        let listener = {
            let _g = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let this = Arc::clone(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        let sources: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let serve = Arc::new(serve);
        rt.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                // Small request/answer exchanges: no Nagle delay.
                let _ = tcp.set_nodelay(true);
                if this.is_stopping() {
                    break;
                }
                let Some(slot) = Slot::take(&slots, &sources, peer.ip()) else {
                    tracing::warn!(
                        target: "kexin::api",
                        "connection refused: {max} open or {MAX_PER_SOURCE} from one address"
                    );
                    continue;
                };
                let tls = tls.clone();
                let serve = Arc::clone(&serve);
                tokio::spawn(async move {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
                    {
                        serve(stream, slot).await;
                    }
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is in the OpenAPI document with its method, and nothing
    /// else is.
    #[test]
    fn the_document_lists_every_route() {
        let doc = serde_json::to_value(openapi()).expect("document");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let mut listed = vec![];
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                listed.push((method.to_uppercase(), path.clone()));
            }
        }
        listed.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routes.sort();
        assert_eq!(listed, routes);
    }

    /// The certificate carries the node's key (clients pin it) and is the
    /// same each time.
    #[test]
    fn the_certificate_wraps_the_node_key() {
        let me = SigningKey::from_bytes(&[7u8; 32]);
        let names = certificate_names("127.0.0.1:0".parse().expect("addr"));
        let (pem, der, _) = certificate(&me, "h1", &names).expect("certificate");
        let spki = crate::net::spki(&me.verifying_key());
        assert!(der.windows(spki.len()).any(|w| w == spki.as_slice()));
        let (pem2, _, _) = certificate(&me, "h1", &names).expect("certificate");
        assert_eq!(pem, pem2);
    }
}
