//! Arrow Flight SQL for researchers (`kexin node --flight ADDR`): a query
//! from ADBC, pyarrow or any Flight SQL client runs through the same
//! signed-query path as `kexin query` and the HTTP API, and only the
//! released rows come back, as Arrow.
//!
//! - **Transport.** gRPC over TLS 1.3 with the node's self-signed X.509
//!   certificate (the HTTP API's; clients pin the node's key). Its own port.
//! - **The signed query.** Each statement carries a `kexin-query` call
//!   header: the base64url JSON of the researcher's signed query
//!   (`kexin/query-request/v1`: space, node, member, scene, contract, SQL,
//!   nonce, time), exactly as `kexin query` signs it. The `sql` field may be
//!   sent empty: it is the statement's SQL, and the node puts it back before
//!   checking the signature (so long SQL does not have to fit in a header).
//!   The engine checks the signature, freshness, nonce, scene and contract,
//!   and audits a refusal.
//! - **GetFlightInfo** runs the gated query, so the schema it announces is
//!   the released batch's own (nullability included). The outcome
//!   (audit entry, checkpoint, explanation, DP accuracy, contract) is the
//!   FlightInfo's `app_metadata` (JSON) and the schema's `kexin.*` metadata.
//!   The one endpoint's ticket is random, single-use, bound to the member,
//!   and kept at most [`RESULT_TTL`].
//! - **DoGet** streams the batch once. It needs the same `kexin-query`
//!   header, checked against the member's key again.
//! - A refusal is a gRPC error whose message is `KX-…: rule` and whose
//!   metadata has `kexin-code` and `kexin-audit-seq`. A held result is
//!   `FAILED_PRECONDITION` with `kexin-airlock`. Nothing in an error depends
//!   on data.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    CommandGetSqlInfo, CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use kexin_engine::Code;
use kexin_engine::identity::{QueryBody, Signed, tag};
use kexin_engine::node::{Outcome, Status as Decision};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use super::server::NodeServer;
use super::wire::{FromNode, ToNode};

/// The call header that carries the signed query.
pub const QUERY_HEADER: &str = "kexin-query";
/// How long a released result waits for its DoGet.
pub const RESULT_TTL: Duration = Duration::from_secs(300);
/// Released results waiting for their DoGet, node-wide.
const MAX_PENDING: usize = 256;
/// Flight connections at once; more are closed at once.
const MAX_FLIGHT_CONNECTIONS: usize = 256;

/// One released result waiting for its DoGet.
#[derive(Debug)]
struct Pending {
    member: String,
    sql: String,
    batch: RecordBatch,
    at: Instant,
}

/// The node's Flight SQL service.
#[derive(Clone)]
pub struct FlightSql {
    server: Arc<NodeServer>,
    pending: Arc<Mutex<HashMap<[u8; 32], Pending>>>,
    info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql")
            .field("node", &self.server.node.name())
            .finish_non_exhaustive()
    }
}

/// A refusal as a gRPC status: `KX-…: rule`, with the code and audit
/// entry as metadata.
fn refusal(code: Code, rule: &str, audit_seq: Option<u64>) -> Status {
    let mut s = match code {
        Code::Auth => Status::unauthenticated(format!("{code}: {rule}")),
        Code::Internal => Status::internal(format!("{code}: {rule}")),
        Code::Request => Status::invalid_argument(format!("{code}: {rule}")),
        _ => Status::permission_denied(format!("{code}: {rule}")),
    };
    if let Ok(v) = MetadataValue::try_from(code.as_str()) {
        s.metadata_mut().insert("kexin-code", v);
    }
    if let Some(seq) = audit_seq
        && let Ok(v) = MetadataValue::try_from(seq.to_string())
    {
        s.metadata_mut().insert("kexin-audit-seq", v);
    }
    s
}

fn internal() -> Status {
    let r = kexin_engine::Error::internal("").as_refusal();
    refusal(r.code, r.rule, None)
}

/// The signed query in the call's `kexin-query` header, for the
/// statement's `sql` (an empty `sql` in the header stands for it).
fn signed_query(meta: &MetadataMap, sql: &str) -> Result<Signed<QueryBody>, Status> {
    let unsigned = || {
        refusal(
            Code::Auth,
            "the statement carries no signed query (kexin-query header)",
            None,
        )
    };
    if meta.get_all(QUERY_HEADER).iter().count() > 1 {
        return Err(refusal(
            Code::Auth,
            "the statement carries more than one signed query",
            None,
        ));
    }
    let h = meta.get(QUERY_HEADER).ok_or_else(unsigned)?;
    let mut env: Signed<QueryBody> =
        super::http::header_envelope(h.as_bytes()).ok_or_else(unsigned)?;
    if env.body.sql.is_empty() {
        env.body.sql = sql.to_string();
    } else if env.body.sql != sql {
        return Err(refusal(
            Code::Auth,
            "the signed query is for another statement",
            None,
        ));
    }
    Ok(env)
}

impl FlightSql {
    pub fn new(server: Arc<NodeServer>) -> Result<FlightSql> {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "kexin");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        Ok(FlightSql {
            server,
            pending: Default::default(),
            info: Arc::new(b.build()?),
        })
    }

    /// Keep a released batch for its DoGet; its ticket handle.
    fn keep(&self, member: String, sql: String, batch: RecordBatch) -> Result<[u8; 32], Status> {
        let mut handle = [0u8; 32];
        getrandom::fill(&mut handle).map_err(|_| internal())?;
        let mut p = self.pending.lock().map_err(|_| internal())?;
        p.retain(|_, r| r.at.elapsed() < RESULT_TTL);
        if p.len() >= MAX_PENDING {
            return Err(Status::resource_exhausted(
                "KX-EXEC-LIMIT: too many released results wait to be fetched; fetch them first",
            ));
        }
        p.insert(
            handle,
            Pending {
                member,
                sql,
                batch,
                at: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// The released result of `outcome` as a FlightInfo, with the outcome
    /// (all but the rows) as metadata.
    fn released(&self, member: String, sql: String, o: &Outcome) -> Result<FlightInfo, Status> {
        let batch = o.to_batch().map_err(|_| internal())?;
        let mut meta = std::collections::HashMap::new();
        let mut put = |k: &str, v: String| {
            meta.insert(format!("kexin.{k}"), v);
        };
        if let Some(seq) = o.audit_seq {
            put("audit_seq", seq.to_string());
        }
        if let Some(c) = &o.checkpoint {
            put("checkpoint", c.clone());
        }
        put(
            "explanation",
            serde_json::to_string(&o.explanation).map_err(|_| internal())?,
        );
        put("suppressed_groups", o.suppressed_groups.to_string());
        if let Some(dp) = &o.dp {
            put("dp", serde_json::to_string(dp).map_err(|_| internal())?);
        }
        if let Some(c) = &o.contract {
            put("contract", c.clone());
        }
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
        let batch = batch
            .with_schema(Arc::clone(&schema))
            .map_err(|_| internal())?;
        let mut outcome = serde_json::to_value(o).map_err(|_| internal())?;
        if let Some(m) = outcome.as_object_mut() {
            m.remove("rows");
        }
        let rows = batch.num_rows();
        let handle = self.keep(member, sql, batch)?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|_| internal())?
            .with_endpoint(endpoint)
            .with_total_records(rows as i64)
            .with_ordered(true)
            .with_app_metadata(serde_json::to_vec(&outcome).map_err(|_| internal())?))
    }
}

type DoGetStream = <FlightSql as FlightService>::DoGetStream;

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let env = signed_query(request.metadata(), &query.query)?;
        let member = env.body.member.clone();
        let sql = env.body.sql.clone();
        let server = Arc::clone(&self.server);
        let who = member.clone();
        let answer = tokio::task::spawn_blocking(move || {
            server.answer(&who, "researcher", ToNode::Query(env))
        })
        .await
        .map_err(|_| internal())?
        .map_err(|_| internal())?;
        let o = match answer {
            FromNode::Outcome(o) => o,
            FromNode::Refused {
                code,
                rule,
                audit_seq,
            } => return Err(refusal(code, &rule, audit_seq)),
            _ => return Err(internal()),
        };
        match o.status {
            Decision::Released => Ok(Response::new(self.released(member, sql, &o)?)),
            Decision::Held => {
                let mut s = Status::failed_precondition(format!(
                    "held for review: fetch it from the airlock (entry {}) once approved",
                    o.airlock.unwrap_or_default()
                ));
                if let Some(id) = o.airlock
                    && let Ok(v) = MetadataValue::try_from(id.to_string())
                {
                    s.metadata_mut().insert("kexin-airlock", v);
                }
                Err(s)
            }
            Decision::Refused => Err(refusal(
                o.code.unwrap_or(Code::Internal),
                o.rule.as_deref().unwrap_or(""),
                o.audit_seq,
            )),
        }
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let gone = || {
            refusal(
                Code::Request,
                "no such result (fetched already, expired, or never released)",
                None,
            )
        };
        let handle: [u8; 32] = ticket
            .statement_handle
            .as_ref()
            .try_into()
            .map_err(|_| gone())?;
        let pending = {
            let mut p = self.pending.lock().map_err(|_| internal())?;
            let owner = p.get(&handle).map(|r| (r.member.clone(), r.sql.clone()));
            let Some((member, sql)) = owner else {
                return Err(gone());
            };
            // The same signed query as the GetFlightInfo that released it.
            let env = signed_query(request.metadata(), &sql)?;
            let key = kexin_engine::registry::View::open(&self.server.space)
                .and_then(|v| v.member_key(&member))
                .map_err(|e| {
                    let r = e.as_refusal();
                    refusal(r.code, r.rule, None)
                })?
                .0;
            if env.body.member != member || env.verify(tag::QUERY, &key, Code::Auth).is_err() {
                return Err(refusal(
                    Code::Auth,
                    "the result was released to another member or query",
                    None,
                ));
            }
            p.remove(&handle).ok_or_else(gone)?
        };
        if pending.at.elapsed() >= RESULT_TTL {
            return Err(gone());
        }
        let schema = pending.batch.schema();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(pending.batch)]))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let descriptor = request.into_inner();
        let schema = query.clone().into_builder(&self.info).schema();
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(query.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(schema.as_ref())
            .map_err(|_| internal())?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.info);
        let schema = builder.schema();
        let batch = builder.build();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

// ------------------------------------------------------------- serving

/// A TLS connection that holds one of the Flight port's connection slots
/// until it closes.
struct Admitted {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    _slot: super::http::Slot,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl NodeServer {
    /// Serve Flight SQL on `listener`, on the API's runtime `rt`.
    pub(super) fn serve_flight(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
    ) -> Result<()> {
        let at = listener.local_addr()?;
        let cert = super::http::certificate(
            &self.me,
            self.node.name(),
            &super::http::certificate_names(at),
        )?;
        let tls = tokio_rustls::TlsAcceptor::from(super::http::tls_config(cert.1, cert.2, b"h2")?);
        let (tx, rx) = tokio::sync::mpsc::channel::<Admitted>(64);
        self.accept_tls(
            rt,
            listener,
            tls,
            MAX_FLIGHT_CONNECTIONS,
            move |tls, slot| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Admitted { tls, _slot: slot }).await;
                }
            },
        )?;
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
        })
        .boxed();
        let svc = FlightServiceServer::new(FlightSql::new(Arc::clone(self))?);
        let limit =
            Duration::from_secs(self.space.limits.timeout_seconds) + Duration::from_secs(60);
        rt.spawn(async move {
            let served = tonic::transport::Server::builder()
                .timeout(limit)
                .max_concurrent_streams(16)
                .concurrency_limit_per_connection(8)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                // Every connection is asked to go away after ten minutes
                // (gRPC clients reconnect), so idle ones do not hold slots.
                .max_connection_age(Duration::from_secs(600))
                .max_connection_age_grace(limit)
                .http2_max_header_list_size(64 * 1024)
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                tracing::warn!(target: "kexin::flight", "flight server stopped: {e}");
            }
        });
        Ok(())
    }
}
