//! Witnessing between nodes (see [`kexin_engine::witness`]): a node shows
//! its latest checkpoint to every peer, which keeps it and countersigns;
//! `kexin audit verify --witnesses` asks the peers what they hold and
//! checks the log against it. The node server shows its checkpoint to its
//! peers by itself whenever its log has grown (every few seconds).

use std::time::Duration;

use anyhow::{Result, anyhow};
use ed25519_dalek::SigningKey;
use kexin_engine::evidence::{Cosignature, LogKey, Vouch};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::node::Node;
use kexin_engine::policy::Space;
use serde::Serialize;

use crate::federation::{FedConfig, FromNode, ToNode, node_key};
use crate::net::Link;

/// What one peer said to a checkpoint shown to it.
#[derive(Debug, Clone, Serialize)]
pub struct Witnessed {
    pub witness: String,
    /// The witness's countersignature (a signed note over the same
    /// checkpoint), when it accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosigned: Option<String>,
    /// Why not, when it did not (or could not be reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

fn link_to(space: &Space, cfg: &FedConfig, me: &SigningKey, peer: &str) -> Result<Link> {
    let addr = cfg.addr(peer)?;
    let key = node_key(space, cfg, peer)?;
    Link::connect(&addr.address, me, &key, cfg.round_timeout())
}

/// Show `node`'s latest checkpoint to every other node of the space, as the
/// node (with its key `me`). Returns each peer's answer; `None` when the log
/// is still empty.
pub fn submit(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    node: &Node,
) -> Result<Option<Vec<Witnessed>>> {
    let Some((note, verifier)) = node.checkpoint_for_witnesses()? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for peer in space.nodes.iter().filter(|n| *n != node.name()) {
        let answer = link_to(space, cfg, me, peer).and_then(|mut l| {
            l.send_json(&ToNode::Witness {
                verifier: verifier.clone(),
                note: note.clone(),
            })?;
            l.recv_json::<FromNode>()
        });
        out.push(match answer {
            Ok(FromNode::Cosigned { note }) => Witnessed {
                witness: peer.clone(),
                cosigned: Some(note),
                refused: None,
            },
            Ok(FromNode::Refused { rule, .. }) => Witnessed {
                witness: peer.clone(),
                cosigned: None,
                refused: Some(rule),
            },
            Ok(_) => Witnessed {
                witness: peer.clone(),
                cosigned: None,
                refused: Some("an unexpected answer".into()),
            },
            Err(e) => Witnessed {
                witness: peer.clone(),
                cosigned: None,
                refused: Some(format!("unreachable: {e}")),
            },
        });
    }
    Ok(Some(out))
}

/// Node `node`'s vouch for its log key: its certificate (from the
/// registry) and the statement, signed with its member key `me`, that
/// `verifier` signs its log's checkpoints.
pub fn vouch(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    node: &str,
    verifier: &str,
) -> Result<Vouch> {
    let member = &cfg.addr(node)?.member;
    let (key, certificate) = kexin_engine::registry::View::open(space)?.member_key(member)?;
    anyhow::ensure!(
        key == me.verifying_key(),
        "the key of {member} is not the one its certificate names"
    );
    let log_key = Signed::sign(
        tag::LOG_KEY,
        LogKey {
            space: space.name.clone(),
            node: node.to_string(),
            verifier: verifier.to_string(),
            time: kexin_engine::store::now_utc().1,
        },
        me,
    )?;
    Ok(Vouch {
        certificate,
        log_key,
    })
}

/// Ask every other node of the space for its countersignature of the
/// checkpoint of `of` it holds, connecting as the member whose key is `me`.
/// A peer that cannot be reached or holds none is left out, with why.
pub fn cosignatures(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    of: &str,
) -> Vec<std::result::Result<Cosignature, String>> {
    let mut out = Vec::new();
    for peer in space.nodes.iter().filter(|n| *n != of) {
        let answer = link_to(space, cfg, me, peer).and_then(|mut l| {
            l.send_json(&ToNode::Cosign {
                node: of.to_string(),
            })?;
            l.recv_json::<FromNode>()
        });
        out.push(match answer {
            Ok(FromNode::Cosignature {
                note: Some(note),
                vouch,
            }) => Ok(Cosignature {
                witness: peer.clone(),
                note,
                vouch: *vouch,
            }),
            Ok(FromNode::Cosignature { note: None, .. }) => {
                Err(format!("{peer} holds no checkpoint of {of} yet"))
            }
            Ok(FromNode::Refused { rule, .. }) => Err(format!("{peer} refused: {rule}")),
            Ok(_) => Err(format!("{peer} gave an unexpected answer")),
            Err(e) => Err(format!("{peer} cannot be reached: {e}")),
        });
    }
    out
}

/// Ask every other node of the space which checkpoint of `of` it holds,
/// connecting as the member whose key is `me`. Returns (label, note) pairs
/// for [`kexin_engine::store::verify_with`]; a peer that cannot be asked is
/// an error (the check it would have made cannot be skipped silently).
pub fn held(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    of: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for peer in space.nodes.iter().filter(|n| *n != of) {
        let mut l = link_to(space, cfg, me, peer)
            .map_err(|e| anyhow!("witness {peer} cannot be asked: {e}"))?;
        l.send_json(&ToNode::Witnessed {
            node: of.to_string(),
        })?;
        match l.recv_json::<FromNode>()? {
            FromNode::Checkpoint { note: Some(note) } => {
                out.push((format!("the checkpoint witnessed by {peer}"), note));
            }
            FromNode::Checkpoint { note: None } => {}
            _ => return Err(anyhow!("witness {peer} gave an unexpected answer")),
        }
    }
    Ok(out)
}

/// The node server's side of `ToNode::Witness`: only a node of the space
/// shows its own checkpoint (named by its TLS identity).
pub(crate) fn serve_witness(
    node: &Node,
    cfg: &FedConfig,
    mut link: Link,
    member: &str,
    role: &str,
    verifier: &str,
    note: &str,
) -> Result<()> {
    let from = cfg
        .node_of(member, role)
        .ok_or_else(|| anyhow!("a checkpoint from a member that is not a node"))?;
    let reply = match node.witness_peer(&from, verifier, note)? {
        Ok(cosigned) => FromNode::Cosigned { note: cosigned },
        Err(rule) => {
            tracing::warn!(target: "kexin::node", "checkpoint of {from} not witnessed: {rule}");
            FromNode::Refused {
                code: kexin_engine::Code::Witness,
                rule: rule.into(),
                audit_seq: None,
            }
        }
    };
    link.send_json(&reply)
}

/// The node server's side of `ToNode::Witnessed`: any certified member may
/// read what this node holds of another (checkpoints are public).
pub(crate) fn serve_witnessed(node: &Node, mut link: Link, of: &str) -> Result<()> {
    let note = node.witnessed(of)?;
    link.send_json(&FromNode::Checkpoint { note })
}

/// Run on the node server: every `every`, show the log's latest checkpoint
/// to the peers when it has grown since the last time they all took it.
pub(crate) fn keep_witnessed(
    space: &Space,
    cfg: &FedConfig,
    me: &SigningKey,
    node: &Node,
    every: Duration,
) -> ! {
    let mut shown: Option<String> = None;
    loop {
        std::thread::sleep(every);
        let Ok(Some((note, _))) = node.checkpoint_for_witnesses() else {
            continue;
        };
        if shown.as_ref() == Some(&note) {
            continue;
        }
        match submit(space, cfg, me, node) {
            Ok(Some(answers)) if answers.iter().all(|a| a.cosigned.is_some()) => {
                shown = Some(note);
            }
            Ok(_) => {}
            Err(e) => tracing::info!(target: "kexin::node", "witnessing failed: {e:#}"),
        }
    }
}
