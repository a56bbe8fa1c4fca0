//! A small blocking client of a node's HTTP API (one call per connection):
//! TLS pinned to the node's certified key, calls signed with the member's
//! key. Scripts in other languages do the same (`clients/python`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kexin_engine::policy::Space;

/// Who calls, on which node's API.
#[derive(Debug)]
pub struct ApiClient {
    /// `host:port` of the API.
    pub addr: String,
    pub space: Arc<Space>,
    pub node: String,
    node_key: VerifyingKey,
    /// The calling member and their key; `None` calls unsigned.
    pub caller: Option<(String, SigningKey)>,
    pub timeout: Duration,
}

/// One answer: the HTTP status and the JSON body.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiClient {
    /// A client of `node`'s API at `addr`, pinned to the node's certified
    /// key.
    pub fn new(
        space: Arc<Space>,
        node: &str,
        addr: &str,
        caller: Option<(String, SigningKey)>,
    ) -> Result<ApiClient> {
        let cfg = super::FedConfig::load(&space.dir)?;
        let node_key = super::node_key(&space, &cfg, node)?;
        Ok(ApiClient {
            addr: addr.into(),
            space,
            node: node.into(),
            node_key,
            caller,
            timeout: Duration::from_secs(60),
        })
    }

    /// `GET target` (a path with its query string).
    pub fn get(&self, target: &str) -> Result<ApiAnswer> {
        self.call("GET", target, None, &[])
    }

    /// `POST target` with `body` as JSON.
    pub fn post<T: serde::Serialize>(&self, target: &str, body: &T) -> Result<ApiAnswer> {
        self.call("POST", target, None, &serde_json::to_vec(body)?)
    }

    /// One call. `header` replaces the signature the caller would make
    /// (tests replay or forge calls with it).
    pub fn call(
        &self,
        method: &str,
        target: &str,
        header: Option<&str>,
        body: &[u8],
    ) -> Result<ApiAnswer> {
        let signature = match (header, &self.caller) {
            (Some(h), _) => Some(h.to_string()),
            (None, Some((member, key))) => Some(crate::members::request_header(
                &self.space,
                &self.node,
                member,
                key,
                method,
                target,
                body,
            )?),
            (None, None) => None,
        };
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(sig) = &signature {
            head.push_str(&format!("{}: {sig}\r\n", super::REQUEST_HEADER));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    /// Send the bytes of a whole request as they are, and parse the answer.
    pub fn raw(&self, request: &[u8]) -> Result<ApiAnswer> {
        parse_answer(&self.exchange(request)?)
    }

    /// Send `request` and read the whole answer (the node closes the
    /// connection after it).
    pub fn exchange(&self, request: &[u8]) -> Result<Vec<u8>> {
        let cfg = crate::net::api_client_config(&self.node_key)?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
        let conn = rustls::ClientConnection::new(cfg, name)?;
        let tcp = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request)?;
        tls.flush()?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => {}
            // A peer that closes without close_notify after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }
}

/// Status and JSON body of an HTTP/1.1 answer (`Content-Length` or
/// chunked).
fn parse_answer(raw: &[u8]) -> Result<ApiAnswer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).context("the answer is not JSON")?
    };
    Ok(ApiAnswer { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..end])?.trim(), 16)?;
        b = &b[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
