//! The CLI as a client of a node server: one request over the member's
//! mutually authenticated link (the member's key, the node's pinned key),
//! one answer. Commands that act on a node go this way by default; `--local`
//! runs them in process instead, which only the node's operator can do on
//! the node's own machine (it opens the node's state and keys).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::Code;
use kexin_engine::log_view::{LogPage, MAX_PAGE};
use kexin_engine::policy::Space;

use super::config::{FedConfig, node_key};
use super::wire::{FromNode, ToNode};
use crate::net::{CONTROL, Link};

/// How many times a client tries to open its link.
const CONNECT_TRIES: u64 = 5;

/// Send `msg` to `node` as the holder of `key` and read its answer, waiting
/// at most `wait` for it once sent.
pub fn ask(
    space: &Space,
    node: &str,
    key: &SigningKey,
    msg: &ToNode,
    wait: Duration,
) -> Result<FromNode> {
    let cfg = FedConfig::load(&space.dir)?;
    let addr = &cfg.addr(node)?.address;
    let pinned = node_key(space, &cfg, node)?;
    // A node turns away handshakes past its per-address limit (many clients
    // behind one address starting at once): nothing was sent yet, so try
    // again a few times, a little later each time.
    let mut tries = 0;
    let mut link = loop {
        tries += 1;
        match Link::connect(addr, key, &pinned, cfg.round_timeout()) {
            Ok(link) => break link,
            Err(_) if tries < CONNECT_TRIES => {
                std::thread::sleep(Duration::from_millis(50 * tries));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot reach node {node} at {addr}: is `kexin node --node {node}` running? \
                         (its operator can run the command on the node's own machine with --local)"
                    )
                });
            }
        }
    };
    link.set_timeout(wait)?;
    link.send(CONTROL, &serde_json::to_vec(msg)?)?;
    link.recv_json::<FromNode>()
        .with_context(|| format!("node {node} did not answer"))
}

/// How long a client waits for a query's answer: the space's query
/// deadline, plus a round timeout for the link.
pub fn query_wait(space: &Space) -> Result<Duration> {
    let cfg = FedConfig::load(&space.dir)?;
    Ok(Duration::from_secs(space.limits.timeout_seconds) + cfg.round_timeout())
}

/// An answer the request cannot have.
pub fn unexpected(node: &str, got: &FromNode) -> anyhow::Error {
    let kind = serde_json::to_value(got)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().next().cloned())
                .or(v.as_str().map(str::to_string))
        })
        .unwrap_or_default();
    anyhow!("node {node} answered with an unexpected message ({kind})")
}

/// A node's whole log as read: its pages and its verifier key.
pub type LogRead = (Vec<LogPage>, String);

/// Every page of node `node`'s audit log as the holder of `key` may read
/// it (all leaves; the entries the member may see), under the checkpoint
/// of the first page, with the node's verifier key; or the node's refusal
/// (its code and rule). Check the pages with
/// [`kexin_engine::log_view::check_pages`].
pub fn read_log(
    space: &Space,
    node: &str,
    key: &SigningKey,
) -> Result<std::result::Result<LogRead, (Code, String)>> {
    let wait = query_wait(space)?;
    let (mut pages, mut verifier, mut size) = (Vec::<LogPage>::new(), None::<String>, None);
    loop {
        let msg = ToNode::AuditLog {
            size,
            from: pages.last().map_or(1, LogPage::next),
            limit: MAX_PAGE,
        };
        let (page, v) = match ask(space, node, key, &msg, wait)? {
            FromNode::Log { page, verifier } => (*page, verifier),
            FromNode::Refused { code, rule, .. } => return Ok(Err((code, rule))),
            other => return Err(unexpected(node, &other)),
        };
        // Every page must come under the first page's key (`check_pages`
        // compares the checkpoints).
        if *verifier.get_or_insert_with(|| v.clone()) != v {
            anyhow::bail!("node {node} changed its verifier key between pages");
        }
        // A page that brings no leaf, or more than asked, ends the read
        // (`check_pages` then finds what is missing).
        let done = page.leaves.is_empty()
            || page.leaves.len() as u64 > MAX_PAGE
            || page.next() > page.size
            || size.is_some_and(|s| s != page.size);
        size = Some(page.size);
        pages.push(page);
        if done {
            return Ok(Ok((pages, verifier.unwrap_or_default())));
        }
    }
}
