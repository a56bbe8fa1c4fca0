//! Federation: the node server (`kexin node`), the researcher's side of a
//! federated query (`kexin federate`) and of a private set intersection
//! (`kexin psi`).
//!
//! ```text
//! researcher ──Federate(signed)──▶ every node     each: authenticate, compute
//!            ◀──Ready(plan digest)──               its partial under its policy
//! researcher ──Go──▶ every node
//!   nodes:  the protocol's rounds (kexin_engine::federated::rounds), carried
//!           over TLS links between the nodes by the server's pump
//! researcher ◀──Released(rows) or Aborted── every node (all must agree)
//! ```
//!
//! Each node audits the outcome under the same session digest. Any missing,
//! late, malformed, replayed or misattributed message aborts the round at
//! the node that sees it; the researcher gets rows only when every node
//! released the same rows.
//!
//! | file | what it holds |
//! |---|---|
//! | `federation/config.rs` | `federation.toml`, node identities, pinned keys |
//! | `federation/wire.rs` | the JSON control messages ([`ToNode`], [`FromNode`]) |
//! | `federation/admission.rs` | connection limits before and after the handshake |
//! | `federation/server.rs` | accept, TLS, routing, sessions, the pump and its timeouts |
//! | `federation/services.rs` | each request: authenticate, compute, run the role, audit |
//! | `federation/direct.rs` | requests one node answers alone: a researcher's query, the contracts a member may see |
//! | `federation/flight.rs` | Arrow Flight SQL (`kexin node --flight`): the signed query, released rows as Arrow |
//! | `federation/http.rs` | the HTTP JSON API (`kexin node --http`): signed calls, TLS, OpenAPI |
//! | `federation/console.rs` | the web console (`kexin node --console`): routes, sessions, sign-in; `console/` its role pages, signed actions, texts, plots |
//! | `federation/api_client.rs` | a blocking client of that API (pinned TLS, signed calls) |
//! | `federation/client.rs` | the CLI as a client: one request over the member's link, one answer |
//! | `federation/researcher.rs` | `kexin federate` / `kexin psi`: Ready, Go or Cancel, agreement |

mod admission;
mod api_client;
mod client;
mod config;
mod console;
mod direct;
mod flight;
mod http;
mod researcher;
mod server;
mod services;
mod wire;

pub use api_client::{ApiAnswer, ApiClient};
pub use client::{LogRead, ask, query_wait, read_log, unexpected};
pub(crate) use config::node_key;
pub use config::{FedConfig, NodeAddr, node_identity, pins};
pub use console::{CONSOLE_CERT_TAG, LOGIN_TARGET, announce as console_announce, binding_message};
pub use flight::{FlightSql, QUERY_HEADER, RESULT_TTL};
pub use http::{ApiServer, REQUEST_HEADER, ROUTES, certificate, openapi};
pub(crate) use researcher::{Answer, abort_rule, connect_all, converse, reports};
pub use researcher::{
    FederatedOutcome, JointStatus, NodeDecision, NodeReport, PsiOutcome, federate, psi,
};
pub use server::NodeServer;
pub use wire::{FromNode, PsiResult, ToNode};
