//! `kexin id | consent | contract | airlock`: the members' commands.
//!
//! Every command that changes state signs what it sends with the acting
//! member's key file (`--key`, default `<space>/keys/<member>.key`) and
//! prints what was recorded only after it committed. Refusals print their
//! fixed code and rule and exit with the code's status.

pub(crate) mod accounting;
pub(crate) mod audit;
pub(crate) mod dataset;
pub(crate) mod dispute;
pub(crate) mod query;
pub(crate) mod target;
pub(crate) mod udf;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use kexin::Format;
use kexin::members::{self, Issue};
use kexin_engine::identity::{self, Certificate, IdCardNumber, Signed};
use kexin_engine::policy::{Release, Space};
use kexin_engine::registry::Registry;
use kexin_engine::{airlock, consent, contract};
use target::{Refused, Target};

#[derive(Subcommand, Debug)]
pub enum IdAction {
    /// Create a new ed25519 key file (mode 0600) and print its public key.
    New {
        /// The key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The member name the key is for.
        #[arg(long)]
        member: String,
    },
    /// The operator certifies a member's public key and attributes.
    Issue {
        #[arg(long)]
        space: PathBuf,
        /// The operator's key file (default <space>/keys/operator.key).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        member: String,
        /// researcher, holder, operator or individual.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        org: String,
        /// The member's public key (hex), as `kexin id new` printed it.
        #[arg(long)]
        public_key: String,
        /// Individuals: the verified GB 11643 ID number to bind (stored only
        /// as a keyed digest).
        #[arg(long)]
        id_number: Option<String>,
        /// Last valid day of the certificate.
        #[arg(long, default_value = "2030-12-31")]
        valid_to: String,
        /// Also write the certificate here (it verifies offline).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a certificate offline against the space's operator key.
    Verify {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        cert: PathBuf,
    },
    /// List the members the registry holds certificates for.
    List {
        #[arg(long)]
        space: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A data holder binds an individual to a person key of its node (a
    /// hospital record number, a token, or an ID number), signed with the
    /// holder's key: the individual's consent then decides about those
    /// rows. Runs on the node's machine (the key's digest needs the space's
    /// ID key); only the digest is kept.
    Bind {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: String,
        /// The data holder who binds (a holder of the node).
        #[arg(long = "as")]
        member: String,
        /// The holder's key file (default: space/keys/<member>.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The individual member.
        #[arg(long)]
        person: String,
        /// national-id, hospital-record or token (default: the scheme of
        /// the space's datasets, when they share one).
        #[arg(long)]
        scheme: Option<String>,
        /// The person key as the node's data holds it.
        #[arg(long)]
        person_key: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a sign-in token for a node's web console: the member's signed
    /// request for `POST /console/login`, valid for 5 minutes and once. Paste
    /// it into the console's sign-in page (for browsers without a key file
    /// at hand; the page can also sign in with the key file itself).
    Login {
        #[arg(long)]
        space: PathBuf,
        /// The node whose console to sign in to (default: the space's first).
        #[arg(long)]
        node: Option<String>,
        #[arg(long = "as")]
        member: String,
        /// The member's key file (default: space/keys/<member>.key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConsentAction {
    /// Grant a scene: a signed consent receipt, effective when recorded.
    Grant {
        #[command(flatten)]
        who: Person,
        #[arg(long)]
        scene: String,
        /// The DUO purpose agreed to (GRU, HMB, DS:<ICD-10>); default the
        /// scene's own. It must cover the scene's purpose.
        #[arg(long)]
        purpose: Option<String>,
        /// DUO modifiers: NPU (not-for-profit only), IRB (ethics approval).
        #[arg(long)]
        modifier: Vec<String>,
        /// Last day the grant covers (UTC, inclusive).
        #[arg(long)]
        until: Option<String>,
    },
    /// Revoke a scene: every query that starts after this commits excludes
    /// the person.
    Revoke {
        #[command(flatten)]
        who: Person,
        #[arg(long)]
        scene: String,
    },
    /// The receipts on record: an individual's own; data holders and the
    /// operator see anyone's (`--person`), or everyone's for a scene.
    List {
        #[arg(long)]
        space: PathBuf,
        /// The asking member (an individual sees only their own receipts).
        /// With --local and no --person, the person to list.
        #[arg(long = "as")]
        person: Option<String>,
        /// The person whose receipts to list (data holders, the operator).
        #[arg(long = "person")]
        subject: Option<String>,
        #[arg(long)]
        scene: Option<String>,
        #[command(flatten)]
        via: Via,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Every audited use of the person's records.
    History {
        #[arg(long)]
        space: PathBuf,
        #[arg(long = "as")]
        person: String,
        #[command(flatten)]
        via: Via,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// How a command reaches the node: its server (default), or this process.
#[derive(clap::Args, Debug)]
pub struct Via {
    /// The node whose server to ask (default: the space's first node).
    #[arg(long)]
    node: Option<String>,
    /// The acting member's key file (default <space>/keys/<as>.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Run in this process on the node's own machine (the node's operator
    /// only: it opens the node's state and keys) instead of asking the
    /// node's server.
    #[arg(long)]
    local: bool,
}

#[derive(clap::Args, Debug)]
pub struct Person {
    #[arg(long)]
    space: PathBuf,
    #[arg(long = "as")]
    person: String,
    #[command(flatten)]
    via: Via,
}

#[derive(clap::Args, Debug)]
pub struct OnNode {
    #[arg(long)]
    space: PathBuf,
    /// The acting member.
    #[arg(long = "as")]
    member: String,
    #[command(flatten)]
    via: Via,
}

/// A read of the node's records, as a member (or in process).
#[derive(clap::Args, Debug)]
pub struct Reader {
    #[arg(long)]
    space: PathBuf,
    /// The asking member (not needed with --local).
    #[arg(long = "as")]
    member: Option<String>,
    #[command(flatten)]
    via: Via,
}

#[derive(Subcommand, Debug)]
pub enum ContractAction {
    /// A data holder of the node offers a contract to a researcher.
    Offer {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        requester: String,
        #[arg(long)]
        scene: String,
        /// Comma-separated datasets (default: the scene's).
        #[arg(long, value_delimiter = ',')]
        datasets: Option<Vec<String>>,
        /// auto or review (default: the scene's).
        #[arg(long, value_parser = parse_release)]
        release: Option<Release>,
        #[arg(long, default_value_t = 1000)]
        max_queries: u64,
        /// DP scenes: cap on the requester's ε under this contract.
        #[arg(long)]
        epsilon: Option<f64>,
        /// Last valid day (default: the scene's).
        #[arg(long)]
        valid_to: Option<String>,
        /// Run no query under the contract while a dispute over one of its
        /// audit entries is open (`kexin dispute`).
        #[arg(long)]
        pause_on_dispute: bool,
        /// The value rule: what each released result under the contract is
        /// worth (an integer in the contract's unit); a joint result's is
        /// split among the nodes by the persons each contributed, and
        /// `kexin accounting statement` shows each node's share.
        #[arg(long)]
        fee_per_release: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The requester agrees (OFFERED -> AGREED) or a holder finalizes
    /// (AGREED -> FINALIZED).
    Sign {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Either party ends the contract; queries under it are refused.
    Terminate {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The node's contracts the member may see (or one): all of them for
    /// a data holder of the node, their own for a researcher.
    Show {
        #[command(flatten)]
        on: Reader,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum AirlockAction {
    /// Held, released and rejected results on the node: all of them for a
    /// data holder of the node, their own for a researcher.
    List {
        #[command(flatten)]
        on: Reader,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a held result: to the node's data holders for review, to the
    /// requester once released.
    Show {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: u64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A data holder (never the requester) approves the held result.
    Approve {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: u64,
    },
    /// A data holder rejects the held result; it is never released.
    Reject {
        #[command(flatten)]
        on: OnNode,
        #[arg(long)]
        id: u64,
    },
}

/// Print a refusal (fixed code and rule) and return its exit status; other
/// errors propagate.
fn refused(e: kexin_engine::Error, format: Format) -> Result<u8> {
    match target::answer::<()>(Err(e))? {
        Ok(()) => Ok(0),
        Err(r) => print_refused(r, format),
    }
}

/// Print a refusal and return its exit status.
pub(crate) fn print_refused(r: Refused, format: Format) -> Result<u8> {
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({"status": "refused", "code": r.code, "rule": r.rule})
        );
    } else {
        println!("refused {}: {}", r.code, r.rule);
    }
    Ok(u8::try_from(r.code.exit_status()).unwrap_or(1))
}

/// The acting member's key and the node the command acts on.
fn reach(space: &Arc<Space>, member: &str, via: &Via) -> Result<(SigningKey, Target)> {
    let key = members::load_key(&space.dir, member, via.key.as_deref())?;
    let target = Target::open(space, via.node.clone(), Some(&key), via.local)?;
    Ok((key, target))
}

/// The node to read from, as `member` (not needed in process).
fn reader(space: &Arc<Space>, on: &Reader) -> Result<Target> {
    let key = match (&on.member, on.via.local) {
        (Some(m), false) => Some(members::load_key(&space.dir, m, on.via.key.as_deref())?),
        _ => None,
    };
    Target::open(space, on.via.node.clone(), key.as_ref(), on.via.local)
}

fn load(space: &std::path::Path) -> Result<Arc<Space>> {
    Ok(Arc::new(Space::load(space)?))
}

pub fn id(action: IdAction) -> Result<u8> {
    match action {
        IdAction::New { out, member } => {
            let pk = identity::new_key_file(&out, &member)?;
            println!("{}", hex::encode(pk.as_bytes()));
            Ok(0)
        }
        IdAction::Issue {
            space,
            key,
            member,
            role,
            org,
            public_key,
            id_number,
            valid_to,
            out,
        } => {
            let space = load(&space)?;
            let operator = members::load_key(&space.dir, "operator", key.as_deref())?;
            let public = identity::parse_public_key(&public_key)
                .context("--public-key is not a hex ed25519 public key")?;
            let id = match id_number.as_deref() {
                None => None,
                Some(n) => Some(IdCardNumber::parse(n).context(
                    "--id-number is not a valid GB 11643 number (18 characters, valid birth date and check digit)",
                )?),
            };
            anyhow::ensure!(
                identity::valid_date(&valid_to),
                "--valid-to is not YYYY-MM-DD"
            );
            // A role outside the closed set is refused like any other
            // refused certificate (KX-AUTH, exit status 3).
            let Some(role) = identity::Role::parse(&role) else {
                return refused(
                    kexin_engine::Error::refused(kexin_engine::Code::Auth, "unknown role"),
                    Format::Table,
                );
            };
            let mut registry = Registry::open(Arc::clone(&space))?;
            let cert = members::certificate(
                &space,
                &registry,
                &operator,
                &Issue {
                    member: &member,
                    role,
                    org: &org,
                    public_key: public,
                    id_number: id.as_ref(),
                    real_name_verified: id.is_some(),
                    valid_to: &valid_to,
                },
            )?;
            match registry.issue(cert.clone()) {
                Ok(seq) => {
                    if let Some(out) = out {
                        std::fs::write(&out, serde_json::to_string_pretty(&cert)?)?;
                    }
                    println!("issued a certificate to {member} ({role}); registry audit seq {seq}");
                    Ok(0)
                }
                Err(e) => refused(e, Format::Table),
            }
        }
        IdAction::Verify { space, cert } => {
            let space = load(&space)?;
            let text = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let c: Signed<Certificate> = Signed::from_json(&text, kexin_engine::Code::Auth)?;
            let op = space
                .operator_key
                .context("space.toml has no space.operator_key")?;
            match c.check(&space.name, &op, &kexin_engine::store::now_utc().0) {
                Ok(_) => {
                    println!(
                        "valid: {} ({}, {}) until {}",
                        c.body.member, c.body.role, c.body.org, c.body.valid_to
                    );
                    Ok(0)
                }
                Err(e) => refused(e, Format::Table),
            }
        }
        IdAction::Login {
            space,
            node,
            member,
            key,
        } => {
            let space = load(&space)?;
            let node = node.unwrap_or_else(|| space.default_node().to_string());
            let k = members::load_key(&space.dir, &member, key.as_deref())?;
            let token = members::request_header(
                &space,
                &node,
                &member,
                &k,
                "POST",
                kexin::federation::LOGIN_TARGET,
                b"",
            )?;
            println!("{token}");
            Ok(0)
        }
        IdAction::Bind {
            space,
            node,
            member,
            key,
            person,
            scheme,
            person_key,
            format,
        } => {
            use kexin_engine::policy::PersonKeyScheme;
            let space = load(&space)?;
            let scheme = match scheme {
                Some(s) => PersonKeyScheme::parse(&s).with_context(|| {
                    format!("unknown scheme {s:?}: national-id, hospital-record or token")
                })?,
                None => {
                    let mut all: Vec<PersonKeyScheme> = Vec::new();
                    for d in space.datasets.values() {
                        if !all.contains(&d.person_key_scheme) {
                            all.push(d.person_key_scheme);
                        }
                    }
                    match all.as_slice() {
                        [one] => *one,
                        _ => anyhow::bail!(
                            "the space's datasets use several person-key schemes: pass --scheme"
                        ),
                    }
                }
            };
            let k = members::load_key(&space.dir, &member, key.as_deref())?;
            let env =
                members::person_binding(&space, &node, &member, &k, &person, scheme, &person_key)?;
            let Target::Local { node: n, .. } = Target::open(&space, Some(node), None, true)?
            else {
                anyhow::bail!("the node did not open in process");
            };
            match n.bind_person(&env) {
                Ok(b) => {
                    if format == Format::Json {
                        println!("{}", serde_json::to_string(&b)?);
                    } else {
                        println!(
                            "node {}: {} bound under {} by {} (audit seq {})",
                            b.node, b.person, b.scheme, b.bound_by, b.audit_seq
                        );
                    }
                    Ok(0)
                }
                Err(e) => refused(e, format),
            }
        }
        IdAction::List { space, format } => {
            let space = load(&space)?;
            let registry = Registry::open(space)?;
            for m in registry.members()? {
                if format == Format::Json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    println!(
                        "{} {} {} {}{}",
                        m.member,
                        m.role,
                        m.org,
                        m.public_key,
                        if m.id_bound { " (ID bound)" } else { "" }
                    );
                }
            }
            Ok(0)
        }
    }
}

pub fn consent(action: ConsentAction) -> Result<u8> {
    let (who, scene, act, purpose, modifiers, until) = match action {
        ConsentAction::Grant {
            who,
            scene,
            purpose,
            modifier,
            until,
        } => (who, scene, consent::Verb::Grant, purpose, modifier, until),
        ConsentAction::Revoke { who, scene } => {
            (who, scene, consent::Verb::Revoke, None, vec![], None)
        }
        ConsentAction::List {
            space,
            person,
            subject,
            scene,
            via,
            format,
        } => {
            let space = load(&space)?;
            let (target, filter) = if via.local {
                (Target::Registry, subject.or(person))
            } else {
                let member = person.context(target::MEMBER_NEEDED)?;
                (reach(&space, &member, &via)?.1, subject)
            };
            let records = match target.consents(&space, filter, scene)? {
                Ok(r) => r,
                Err(r) => return print_refused(r, format),
            };
            for r in records {
                if format == Format::Json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "#{} {} {} {} {} {}{} (recorded {})",
                        r.seq,
                        r.person,
                        r.action,
                        r.scene,
                        r.purpose,
                        r.requester,
                        r.until
                            .as_deref()
                            .map(|u| format!(" until {u}"))
                            .unwrap_or_default(),
                        r.recorded_at
                    );
                }
            }
            return Ok(0);
        }
        ConsentAction::History {
            space,
            person,
            via,
            format,
        } => {
            let space = load(&space)?;
            let target = if via.local {
                Target::Registry
            } else {
                reach(&space, &person, &via)?.1
            };
            let uses = match target.history(&space, &person)? {
                Ok(u) => u,
                Err(r) => return print_refused(r, format),
            };
            for u in &uses {
                if format == Format::Json {
                    println!("{}", serde_json::to_string(u)?);
                } else {
                    println!(
                        "{} node {} #{}: {} {} by {} under {} ({}{}){}",
                        u.time,
                        u.node,
                        u.audit_seq,
                        u.decision,
                        u.scene,
                        u.requester,
                        u.contract.as_deref().unwrap_or("no contract"),
                        u.purpose,
                        u.purpose_zh
                            .as_deref()
                            .map(|z| format!(", {z}"))
                            .unwrap_or_default(),
                        u.disputes
                            .iter()
                            .map(|d| format!("; dispute #{} {}", d.id, d.state))
                            .collect::<String>()
                    );
                }
            }
            if format != Format::Json {
                if uses.is_empty() {
                    println!("no recorded use of {person}'s records");
                }
                // Per scene: how many released results used the records.
                let mut released: std::collections::BTreeMap<&str, usize> = Default::default();
                for u in &uses {
                    if u.decision == kexin_engine::audit::Decision::Released {
                        *released.entry(u.scene.as_str()).or_default() += 1;
                    }
                }
                for (scene, n) in released {
                    println!(
                        "{scene}: {n} released result{} used {person}'s records",
                        if n == 1 { "" } else { "s" }
                    );
                }
            }
            return Ok(0);
        }
    };
    let space = load(&who.space)?;
    if let Some(u) = &until {
        anyhow::ensure!(identity::valid_date(u), "--until is not YYYY-MM-DD");
    }
    let (key, target) = if who.via.local {
        let key = members::load_key(&space.dir, &who.person, who.via.key.as_deref())?;
        (key, Target::Registry)
    } else {
        reach(&space, &who.person, &who.via)?
    };
    let r = members::receipt(
        &space,
        &who.person,
        &key,
        &scene,
        act,
        purpose.as_deref(),
        modifiers,
        until,
    )?;
    match target.consent(&space, r)? {
        Ok(rec) => {
            println!(
                "recorded {} of {} by {} as consent #{} (registry audit seq {})",
                rec.action, rec.scene, rec.person, rec.seq, rec.audit_seq
            );
            if let Some(zh) = space
                .scenes
                .get(&rec.scene)
                .and_then(|s| s.purpose_zh.as_ref())
            {
                println!("purpose (处理目的): {zh}");
            }
            Ok(0)
        }
        Err(r) => print_refused(r, Format::Table),
    }
}

fn print_contract(c: &kexin_engine::contract::Contract, format: Format) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string(c)?);
    } else {
        println!(
            "{} {} node {} {} -> {} scene {} datasets {} release {} queries {}/{} until {}{}",
            c.id,
            c.state.as_str(),
            c.terms.node,
            c.terms.holder,
            c.terms.requester,
            c.terms.scene,
            c.terms.datasets.join(","),
            c.terms.release,
            c.queries_used,
            c.terms.max_queries,
            c.terms.valid_to,
            c.terms
                .epsilon
                .map(|e| format!(" ε cap {e}"))
                .unwrap_or_default()
                + if c.terms.pause_on_dispute {
                    " (paused while a dispute is open)"
                } else {
                    ""
                }
                + &c.terms
                    .fee_per_release
                    .map(|f| format!(" fee {f} per released result"))
                    .unwrap_or_default()
        );
    }
    Ok(())
}

pub fn contract(action: ContractAction) -> Result<u8> {
    match action {
        ContractAction::Offer {
            on,
            requester,
            scene,
            datasets,
            release,
            max_queries,
            epsilon,
            valid_to,
            pause_on_dispute,
            fee_per_release,
            format,
        } => {
            let space = load(&on.space)?;
            let (key, target) = reach(&space, &on.member, &on.via)?;
            let terms = members::offer(
                &space,
                target.name(),
                &on.member,
                &key,
                &requester,
                &scene,
                members::Offer {
                    datasets,
                    release,
                    max_queries,
                    epsilon,
                    valid_to,
                    pause_on_dispute,
                    fee_per_release,
                },
            )?;
            match target.contract_offer(terms)? {
                Ok(c) => print_contract(&c, format).map(|()| 0),
                Err(r) => print_refused(r, format),
            }
        }
        ContractAction::Sign { on, id, format } => contract_step(on, id, false, format),
        ContractAction::Terminate { on, id, format } => contract_step(on, id, true, format),
        ContractAction::Show { on, id, format } => {
            let space = load(&on.space)?;
            match reader(&space, &on)?.contracts()? {
                Ok(all) => {
                    for c in all {
                        if id.as_ref().is_none_or(|i| *i == c.id) {
                            print_contract(&c, format)?;
                        }
                    }
                    Ok(0)
                }
                Err(r) => print_refused(r, format),
            }
        }
    }
}

/// `sign` (the signer's next step: agree or finalize) or `terminate`.
fn contract_step(on: OnNode, id: String, terminate: bool, format: Format) -> Result<u8> {
    let space = load(&on.space)?;
    let (key, target) = reach(&space, &on.member, &on.via)?;
    let act = if terminate {
        contract::Verb::Terminate
    } else {
        let found = match target.contracts()? {
            Ok(all) => all.into_iter().find(|c| c.id == id),
            Err(r) => return print_refused(r, format),
        };
        match found {
            Some(c) if c.terms.requester == on.member => contract::Verb::Agree,
            Some(_) => contract::Verb::Finalize,
            None => {
                return print_refused(
                    Refused {
                        code: kexin_engine::Code::Contract,
                        rule: "no such contract on this node".into(),
                        audit_seq: None,
                    },
                    format,
                );
            }
        }
    };
    let env = members::contract_action(&space, target.name(), &on.member, &key, &id, act)?;
    match target.contract_act(env)? {
        Ok(c) => print_contract(&c, format).map(|()| 0),
        Err(r) => print_refused(r, format),
    }
}

/// `--release`: one of the closed set's strings.
fn parse_release(s: &str) -> Result<Release, String> {
    Release::parse(s).ok_or_else(|| "expected auto or review".to_string())
}

pub fn airlock(action: AirlockAction) -> Result<u8> {
    let (on, id, act, format) = match action {
        AirlockAction::List { on, format } => {
            let space = load(&on.space)?;
            let held = match reader(&space, &on)?.airlock()? {
                Ok(h) => h,
                Err(r) => return print_refused(r, format),
            };
            for h in held {
                if format == Format::Json {
                    println!("{}", serde_json::to_string(&h)?);
                } else {
                    println!(
                        "#{} {} scene {} requester {} approvals {}/{} sha256 {}",
                        h.id,
                        h.state,
                        h.scene,
                        h.requester,
                        h.approvals.len(),
                        h.approvers_needed,
                        h.output_sha256
                    );
                }
            }
            return Ok(0);
        }
        AirlockAction::Show { on, id, format } => (on, id, airlock::Verb::Fetch, format),
        AirlockAction::Approve { on, id } => (on, id, airlock::Verb::Approve, Format::Table),
        AirlockAction::Reject { on, id } => (on, id, airlock::Verb::Reject, Format::Table),
    };
    let space = load(&on.space)?;
    let (key, target) = reach(&space, &on.member, &on.via)?;
    let found = match target.airlock()? {
        Ok(all) => all.into_iter().find(|h| h.id == id),
        Err(r) => return print_refused(r, format),
    };
    let Some(h) = found else {
        return print_refused(
            Refused {
                code: kexin_engine::Code::Review,
                rule: "no such held result on this node".into(),
                audit_seq: None,
            },
            format,
        );
    };
    let env = members::decision(
        &space,
        target.name(),
        &on.member,
        &key,
        id,
        act,
        &h.output_sha256,
    )?;
    match target.airlock_act(env)? {
        Ok((h, bytes)) => {
            match (act, bytes) {
                (airlock::Verb::Fetch, Some(b)) => {
                    if format == Format::Json {
                        // The exact bytes that were reviewed.
                        println!("{b}");
                    } else {
                        let v: serde_json::Value = serde_json::from_str(&b)?;
                        println!("result #{} ({}), sha256 {}", h.id, h.state, h.output_sha256);
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    }
                }
                _ => println!(
                    "#{} is {} ({} of {} approvals)",
                    h.id,
                    h.state,
                    h.approvals.len(),
                    h.approvers_needed
                ),
            }
            Ok(0)
        }
        Err(r) => print_refused(r, format),
    }
}
