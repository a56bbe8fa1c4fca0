//! `kexin`: the command-line interface and node binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kexin::{Format, demo, render, synth};

mod cli;
use kexin_engine::policy::Space;

#[derive(Parser, Debug)]
#[command(
    name = "kexin",
    version,
    about = "Kexin (可信): a privacy-computing sandbox for medical data spaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What a PSI releases.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PsiMode {
    /// The size of the intersection, with DP noise.
    Cardinality,
    /// The size, and the sum of --column over the intersection, with DP noise.
    Sum,
}

#[derive(Subcommand, Debug)]
enum FheAction {
    /// Generate the node's TFHE keys: the secret key stays in
    /// `<space>/fhe/<node>/client.key`; the compact public key and server
    /// key are published next to it with the node's signed statement.
    Keygen {
        #[arg(long)]
        space: PathBuf,
        /// The key-holder node (as named in federation.toml).
        #[arg(long)]
        node: String,
        /// The node member's key file (default `<space>/keys/node-<node>.key`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a deterministic synthetic multi-hospital data space.
    Gen {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Number of hospitals (nodes h1..hN).
        #[arg(long, default_value_t = 3)]
        hospitals: usize,
        /// Patients per hospital (each has ~3-4 admissions and ~2-4 lab results).
        #[arg(long, default_value_t = 2000)]
        patients: usize,
        /// Random seed; the same seed gives byte-identical data.
        #[arg(long, default_value_t = 2027)]
        seed: u64,
        /// Also write CSV copies of every table.
        #[arg(long)]
        csv: bool,
        /// Write even into a folder that already holds a space (its
        /// space.toml, data, keys and registry are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Write a mock twin of a scene: synthetic tables with the scene's
    /// visible schema, generated from space.toml's declarations alone (no
    /// data is read, no budget spent), to develop queries and UDFs on with
    /// `kexin query --twin`.
    Twin {
        /// The space directory (holds space.toml).
        #[arg(long)]
        space: PathBuf,
        /// The scene to make a twin of.
        #[arg(long)]
        scene: String,
        /// Output directory (created; an earlier twin there needs --force).
        #[arg(long)]
        out: PathBuf,
        /// Rows per dataset, and persons in the synthetic pool.
        #[arg(long, default_value_t = kexin::twin::DEFAULT_ROWS)]
        rows: usize,
        /// A query whose filters half of the persons' rows are made to
        /// satisfy, so that it returns rows on the twin.
        #[arg(long)]
        sql: Option<String>,
        /// The generator's seed (default: random; the manifest records it).
        #[arg(long)]
        seed: Option<u64>,
        /// Replace the twin already in --out.
        #[arg(long)]
        force: bool,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run a researcher's SQL under a scene on one node.
    Query {
        /// The space directory (holds space.toml).
        #[arg(long)]
        space: PathBuf,
        /// The node (hospital) to run on; defaults to the first in space.toml.
        #[arg(long)]
        node: Option<String>,
        /// The scene (purpose) the researcher is authorized for.
        #[arg(long)]
        scene: String,
        /// The researcher (a member name in space.toml).
        #[arg(long = "as")]
        actor: String,
        /// The researcher's key file (default <space>/keys/<as>.key); the
        /// request is signed with it.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The contract to run under (default: the researcher's only active
        /// contract for the scene on the node).
        #[arg(long)]
        contract: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Run in this process on the node's own machine (the node's
        /// operator only: it opens the node's state, keys and data) instead
        /// of asking the node's server.
        #[arg(long)]
        local: bool,
        /// Run on the mock twin in this folder (`kexin twin`) instead of a
        /// node: the same admission, rewrite, UDFs and gate on synthetic
        /// data; the output is marked mock, nothing is charged or audited,
        /// and no key or contract is needed.
        #[arg(long, conflicts_with_all = ["local", "node", "contract", "key"])]
        twin: Option<PathBuf>,
        /// With --twin: a UDF module (.wasm) to use under the scene on the
        /// twin, checked as a data holder's approval checks it (repeatable).
        #[arg(long = "udf", requires = "twin")]
        udfs: Vec<PathBuf>,
        /// The SQL query.
        sql: String,
    },
    /// Run a node server: peers and researchers connect over TLS 1.3 with
    /// their certified member keys (federated queries, PSI).
    Node {
        /// The space directory (holds space.toml and federation.toml).
        #[arg(long)]
        space: PathBuf,
        /// The node (hospital) to serve.
        #[arg(long)]
        node: String,
        /// Address to listen on (default: the node's address in
        /// federation.toml).
        #[arg(long)]
        listen: Option<String>,
        /// The node identity's key file (default <space>/keys/<member>.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also serve the HTTP JSON API (TLS, signed calls) on this
        /// address, e.g. 127.0.0.1:8443 (port 0: any free port).
        #[arg(long)]
        http: Option<String>,
        /// Also serve Arrow Flight SQL (TLS, signed queries) on this
        /// address, e.g. 127.0.0.1:8815 (port 0: any free port).
        #[arg(long)]
        flight: Option<String>,
        /// Also serve the web console (HTTPS, an ECDSA certificate the node
        /// key vouches for) on this address, e.g. 127.0.0.1:8444.
        #[arg(long)]
        console: Option<String>,
    },
    /// A federated query: every node computes its partial under its own
    /// policy, the partials are secret-shared, only the gated joint result
    /// is opened.
    Federate {
        #[arg(long)]
        space: PathBuf,
        /// A federated scene (federated = true).
        #[arg(long)]
        scene: String,
        /// The researcher.
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Comma-separated nodes (at least three).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The SQL query.
        sql: String,
    },
    /// Private set intersection of two nodes' cohorts (ECDH-PSI): a noisy
    /// count of the persons both hold, and nothing else.
    Psi {
        #[arg(long)]
        space: PathBuf,
        /// A scene with a privacy budget; its first dataset's persons are
        /// the cohort.
        #[arg(long)]
        scene: String,
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Exactly two comma-separated nodes; the first releases.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// What is released.
        #[arg(long, value_enum, default_value_t = PsiMode::Cardinality)]
        mode: PsiMode,
        /// `--mode sum`: the column (of the scene's first dataset, with
        /// public bounds) summed over the shared persons, from the second
        /// node's data.
        #[arg(long)]
        column: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// An individual contributes a value to a scene's joint statistic
    /// (Prio3): one share to each of the scene's two aggregators, with a
    /// validity proof; neither aggregator sees the value.
    Contribute {
        #[arg(long)]
        space: PathBuf,
        /// The contributing individual (needs a current grant for the scene).
        #[arg(long = "as")]
        person: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        scene: String,
        /// A whole number in the scene's range (sum scenes), or one of the
        /// scene's bucket labels (histogram scenes).
        #[arg(long)]
        value: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A researcher collects a contribution scene's open batch: released
    /// only when at least `min_batch` valid reports are in it.
    Collect {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        scene: String,
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// FHE keys of a key-holder node (the release gate of FHE-gated scenes).
    Fhe {
        #[command(subcommand)]
        action: FheAction,
    },
    /// Member identities: key files and operator-issued certificates.
    Id {
        #[command(subcommand)]
        action: cli::IdAction,
    },
    /// Individuals grant, revoke and list scene consents, and see every use
    /// of their records.
    Consent {
        #[command(subcommand)]
        action: cli::ConsentAction,
    },
    /// Data-use contracts between a node's data holder and a researcher.
    Contract {
        #[command(subcommand)]
        action: cli::ContractAction,
    },
    /// Results held for data-holder review.
    Airlock {
        #[command(subcommand)]
        action: cli::AirlockAction,
    },
    /// Inspect and verify a node's audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Data holders' signed statements of what their nodes answered.
    Accounting {
        #[command(subcommand)]
        action: cli::accounting::AccountingAction,
    },
    /// Disputes over audited actions: any party to an audit entry opens
    /// one; a data holder of the node or the operator resolves it.
    Dispute {
        #[command(subcommand)]
        action: cli::dispute::DisputeAction,
    },
    /// Load a data holder's own files into its node and list what is
    /// loaded (on the node's machine).
    Dataset {
        #[command(subcommand)]
        action: cli::dataset::DatasetAction,
    },
    /// Approve and list WebAssembly UDF modules (data holders).
    Udf {
        #[command(subcommand)]
        action: UdfAction,
    },
    /// Show the differential-privacy budget ledger of DP scenes.
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// Generate a small space in a temporary directory and walk through
    /// allowed, suppressed, refused and differentially private queries,
    /// consent filtering, the cross-border rule and airlock review.
    Demo {
        /// Keep the generated space in this directory instead of a temp dir.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Check a node's Merkle log against its signed checkpoint. Through the
    /// node's server (default, as --as MEMBER): read every leaf hash and the
    /// entries the member may see, recompute the root, check each entry
    /// shown against its leaf. With --local, on the node's own machine:
    /// recompute every entry and every signed checkpoint from its folder.
    Verify {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// A checkpoint (signed note) saved earlier by a third party: it
        /// must be the root of a prefix of the log.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Through the server: a file holding the checkpoint this command
        /// verified last time. It must be a prefix of the log now; on
        /// success the new checkpoint replaces it (created if missing).
        #[arg(long, conflicts_with = "local")]
        keep: Option<PathBuf>,
        /// Also check the log against the checkpoints of it that the other
        /// nodes of the space witnessed (their node servers must run).
        #[arg(long)]
        witnesses: bool,
        /// The asking member (through the server; with --local --witnesses,
        /// default: the node's own identity from federation.toml).
        #[arg(long = "as")]
        actor: Option<String>,
        /// The member's key file (default: space/keys/<member>.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Verify the node's folder in this process (its operator, on the
        /// node's own machine).
        #[arg(long)]
        local: bool,
    },
    /// Show the node's latest checkpoint to the other nodes, which keep and
    /// countersign it (node servers also do this by themselves every few
    /// seconds while the log grows).
    Witness {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List audit entries as JSON lines. Through the node's server
    /// (default, as --as MEMBER): the entries the member may see (their
    /// own; all of them for the node's data holders and the operator),
    /// printed once the log they come from verifies as `audit verify` does.
    /// With --local: every entry, read from the node's folder.
    List {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        #[arg(long = "as")]
        actor: Option<String>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Read the node's folder in this process (its operator, on the
        /// node's own machine).
        #[arg(long)]
        local: bool,
    },
    /// Ask a node's server for the evidence that audit entry --seq (the
    /// `audit_seq` of a result or receipt) is in its log, and check it: the
    /// checkpoint's signature, the leaf's path to its root, and the entry's
    /// hash. The entry is shown to its actor, the node's data holders and
    /// the operator; anyone gets the proof.
    Prove {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// The asking member.
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        seq: u64,
        /// `json`: the proof itself (entry, leaf, path, checkpoint), to keep.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write a portable evidence bundle here: the entry, its inclusion
        /// proof, the signed checkpoint, the node's certified log key, the
        /// other nodes' countersignatures of the same checkpoint, and the
        /// digests the entry binds. `kexin audit check FILE` verifies it
        /// offline.
        #[arg(long)]
        out: Option<PathBuf>,
        /// On the node's own machine (its operator): read the node's folder
        /// instead of asking its server (no witnesses are asked).
        #[arg(long)]
        local: bool,
    },
    /// Check an evidence bundle (`audit prove --out`) offline, with no
    /// access to the node: the operator's certificate of the node, the
    /// node's signed log key, the checkpoint, the inclusion path, the entry
    /// and the witnesses' countersignatures. Exit status 0 when it checks,
    /// 5 when it does not.
    Check {
        /// The bundle.
        file: PathBuf,
        /// The space whose operator key to check against (space.toml); its
        /// member list also says which member speaks for which node.
        #[arg(long)]
        space: Option<PathBuf>,
        /// The operator key (hex) to check against, when not from --space.
        #[arg(long)]
        operator_key: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum BudgetAction {
    /// Spent and remaining ε per DP scene on one node: the requester
    /// organisation's ledger, which every node of the space holds.
    Show {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// The asking member: a researcher sees their own rows (their DP
        /// scenes even before a charge), a data holder of the node or the
        /// operator everyone's. With --local, only this researcher's rows.
        #[arg(long = "as")]
        actor: Option<String>,
        /// A data holder or the operator: only this researcher's rows.
        #[arg(long)]
        researcher: Option<String>,
        #[arg(long)]
        scene: Option<String>,
        /// The asking member's key file (default <space>/keys/<as>.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Read in this process on the node's own machine.
        #[arg(long)]
        local: bool,
        /// `json` prints one JSON object per line.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum UdfAction {
    /// Check a module and approve it for a scene on the space's nodes; the
    /// module is stored in <space>/udfs/ under its SHA-256 digest.
    Register {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        scene: String,
        /// Nodes to approve it on (repeatable); defaults to the approver's
        /// nodes (every node for the operator).
        #[arg(long)]
        node: Vec<String>,
        /// Who approves: a data holder of the nodes, or the operator. The
        /// approval is signed with their key and recorded in the audit log.
        #[arg(long = "as", default_value = "operator")]
        actor: String,
        /// The approver's key file (default <space>/keys/<as>.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Approve in this process on the nodes' own machine instead of
        /// through their servers.
        #[arg(long)]
        local: bool,
        /// `json` prints one JSON object per node.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The compiled module (wasm32-unknown-unknown, binary format).
        file: PathBuf,
    },
    /// List the modules approved for each scene, with their functions.
    List {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        scene: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// The asking member (not needed with --local).
        #[arg(long = "as")]
        actor: Option<String>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Read in this process on the node's own machine.
        #[arg(long)]
        local: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A researcher submits a module for a scene on one node, for the
    /// node's data holders to review and approve (`udf pending`, `udf
    /// approve`, or the web console).
    Submit {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        scene: String,
        #[arg(long)]
        node: Option<String>,
        /// The submitting researcher (of the scene's requester).
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The compiled module (wasm32-unknown-unknown, binary format).
        file: PathBuf,
    },
    /// The modules submitted on a node: all of them for its data holders
    /// and the operator, a researcher's own for a researcher; with their
    /// digests, functions and whether they are approved yet.
    Pending {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        scene: Option<String>,
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A data holder (or the operator) approves a submitted module by its
    /// digest: a signed approval, checked and audited as `udf register`.
    Approve {
        #[arg(long)]
        space: PathBuf,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        scene: String,
        /// The module's SHA-256 (hex), as `udf pending` shows it.
        #[arg(long)]
        digest: String,
        #[arg(long = "as")]
        actor: String,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEXIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kexin: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A spinner with elapsed time on stderr while the nodes work (hidden when
/// stderr is not a terminal).
fn waiting(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn node_name(space: &Space, node: Option<String>) -> String {
    node.unwrap_or_else(|| space.default_node().to_string())
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Gen {
            out,
            hospitals,
            patients,
            seed,
            csv,
            force,
        } => {
            // A folder that holds a space may hold a hand-written policy and
            // a hospital's own data: never overwritten by accident.
            anyhow::ensure!(
                force || !out.join("space.toml").exists(),
                "{} already holds a space (space.toml): kexin gen would replace its policy, data, \
                 keys and registry; pass --force to do that, or choose another --out",
                out.display()
            );
            let started = std::time::Instant::now();
            let (p, a, l) = synth::generate(
                &out,
                &synth::GenOptions {
                    hospitals,
                    patients,
                    seed,
                    csv,
                    quiet: false,
                    fhe_keys: true,
                },
            )?;
            println!(
                "generated {hospitals} hospitals in {}: {p} patient records, {a} admissions, {l} lab results ({:.1} s)",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            println!("policy: {}", out.join("space.toml").display());
            Ok(0)
        }
        Command::Node {
            space,
            node,
            listen,
            key,
            http,
            flight,
            console,
        } => {
            let space = Arc::new(Space::load(&space)?);
            let server =
                kexin::federation::NodeServer::open(Arc::clone(&space), &node, key.as_deref())?;
            let addr = match listen {
                Some(a) => a,
                None => kexin::federation::FedConfig::load(&space.dir)?
                    .node
                    .get(&node)
                    .map(|a| a.address.clone())
                    .context("no address for the node in federation.toml; pass --listen")?,
            };
            let listener = std::net::TcpListener::bind(&addr)
                .with_context(|| format!("listening on {addr}"))?;
            let at = listener.local_addr()?;
            println!("kexin node {node} listening on {at}");
            std::io::Write::flush(&mut std::io::stdout())?;
            let server = Arc::new(server);
            let bind = |a: &Option<String>| -> Result<Option<std::net::TcpListener>> {
                a.as_ref()
                    .map(|a| {
                        std::net::TcpListener::bind(a).with_context(|| format!("listening on {a}"))
                    })
                    .transpose()
            };
            let (http, flight, console) = (bind(&http)?, bind(&flight)?, bind(&console)?);
            let http_at = http.as_ref().map(|l| l.local_addr()).transpose()?;
            let flight_at = flight.as_ref().map(|l| l.local_addr()).transpose()?;
            let console_at = console.as_ref().map(|l| l.local_addr()).transpose()?;
            let _fronts = server.serve_fronts_with(http, flight, console)?;
            if let (Some(a), Some(spki)) = (console_at, server.console_spki_sha256()) {
                println!("{}", kexin::federation::console_announce(&node, a, &spki));
            }
            if let Some(a) = http_at {
                println!("kexin node {node} api on https://{a}");
            }
            if let Some(a) = flight_at {
                println!("kexin node {node} flight on grpc+tls://{a}");
            }
            server.stop_on_signals(at)?;
            server.serve(listener, || {
                // Scripts and tests wait for this line: the node takes
                // requests from here on.
                println!("kexin node {node} ready on {at}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            })?;
            // Whoever started the node may have closed its output already.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stdout(),
                format_args!("kexin node {node} stopped\n"),
            );
            Ok(0)
        }
        Command::Federate {
            space,
            scene,
            actor,
            key,
            nodes,
            format,
            sql,
        } => {
            let space = Space::load(&space)?;
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let spinner = waiting("nodes computing their partials, then exchanging shares");
            let out = kexin::federation::federate(&space, &actor, &signing, &scene, &nodes, &sql);
            spinner.finish_and_clear();
            let out = out?;
            print!("{}", render::federated(&out, format)?);
            Ok(u8::try_from(out.exit_status()).unwrap_or(1))
        }
        Command::Contribute {
            space,
            person,
            key,
            scene,
            value,
            format,
        } => {
            let space = Space::load(&space)?;
            let signing = kexin::members::load_key(&space.dir, &person, key.as_deref())?;
            let out = kexin::contribute::contribute(&space, &person, &signing, &scene, &value)?;
            print!("{}", render::contribution(&out, format)?);
            Ok(u8::try_from(out.exit_status()).unwrap_or(1))
        }
        Command::Collect {
            space,
            scene,
            actor,
            key,
            format,
        } => {
            let space = Space::load(&space)?;
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let spinner = waiting("aggregators checking the reports' proofs on shares");
            let out = kexin::contribute::collect(&space, &actor, &signing, &scene);
            spinner.finish_and_clear();
            let out = out?;
            print!("{}", render::collection(&out, format)?);
            Ok(u8::try_from(out.exit_status()).unwrap_or(1))
        }
        Command::Fhe {
            action: FheAction::Keygen { space, node, key },
        } => {
            let space = Space::load(&space)?;
            let cfg = kexin::federation::FedConfig::load(&space.dir)?;
            let member = cfg
                .node
                .get(&node)
                .map(|a| a.member.clone())
                .ok_or_else(|| anyhow::anyhow!("federation.toml has no node {node:?}"))?;
            let signing = kexin::members::load_key(&space.dir, &member, key.as_deref())?;
            let spinner = waiting("generating TFHE keys (the server key takes a few seconds)");
            let g = kexin::fhe::keygen(&space, &node, &signing);
            spinner.finish_and_clear();
            let g = g?;
            println!(
                "node {}: FHE keys in {} (public key {} bytes, server key {} bytes, {:.1} s)",
                g.node, g.dir, g.public_key_bytes, g.server_key_bytes, g.seconds
            );
            Ok(0)
        }
        Command::Psi {
            space,
            scene,
            actor,
            key,
            nodes,
            mode,
            column,
            format,
        } => {
            let space = Space::load(&space)?;
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let mode = match mode {
                PsiMode::Cardinality => kexin_engine::federated::PsiMode::Cardinality,
                PsiMode::Sum => kexin_engine::federated::PsiMode::Sum,
            };
            let spinner = waiting("nodes blinding their cohorts, then exchanging blinded sets");
            let out = kexin::federation::psi(
                &space,
                &actor,
                &signing,
                &scene,
                &nodes,
                mode,
                column.as_deref(),
            );
            spinner.finish_and_clear();
            let out = out?;
            print!("{}", render::psi(&out, format)?);
            Ok(u8::try_from(out.status.exit_status()).unwrap_or(1))
        }
        Command::Query {
            space,
            node,
            scene,
            actor,
            key,
            contract,
            format,
            local,
            twin,
            udfs,
            sql,
        } => {
            let space = Arc::new(Space::load(&space)?);
            if let Some(dir) = twin {
                let outcome = cli::query::run_twin(&space, &scene, &actor, &sql, &dir, &udfs)?;
                print!("{}", render::outcome(&outcome, format)?);
                return Ok(u8::try_from(outcome.exit_status()).unwrap_or(1));
            }
            let signing = kexin::members::load_key(&space.dir, &actor, key.as_deref())?;
            let ask = cli::query::Ask {
                node: node_name(&space, node),
                scene,
                actor,
                contract,
                sql,
            };
            let outcome = cli::query::run(&space, &ask, &signing, local)?;
            print!("{}", render::outcome(&outcome, format)?);
            Ok(u8::try_from(outcome.exit_status()).unwrap_or(1))
        }
        Command::Twin {
            space,
            scene,
            out,
            rows,
            sql,
            seed,
            force,
            format,
        } => {
            let space = Space::load(&space)?;
            let opts = kexin::twin::TwinOptions {
                scene,
                rows,
                sql,
                seed,
                force,
            };
            let m = kexin::twin::make(&space, &opts, &out)?;
            print!("{}", cli::query::twin_summary(&m, &out, format)?);
            Ok(0)
        }
        Command::Audit { action } => cli::audit::audit(action),
        Command::Udf { action } => cli::udf::udf(action),
        Command::Dataset { action } => cli::dataset::dataset(action),
        Command::Dispute { action } => cli::dispute::dispute(action),
        Command::Accounting { action } => cli::accounting::accounting(action),
        Command::Budget {
            action:
                BudgetAction::Show {
                    space,
                    node,
                    actor,
                    researcher,
                    scene,
                    key,
                    local,
                    format,
                },
        } => {
            let space = Arc::new(Space::load(&space)?);
            let (target, filter) = if local {
                let t = cli::target::Target::open(&space, node, None, true)?;
                (t, researcher.or(actor))
            } else {
                let member = actor.context(cli::target::MEMBER_NEEDED)?;
                let signing = kexin::members::load_key(&space.dir, &member, key.as_deref())?;
                let t = cli::target::Target::open(&space, node, Some(&signing), false)?;
                (t, researcher)
            };
            let rows = match target.budgets(filter, scene)? {
                Ok(r) => r,
                Err(r) => return cli::print_refused(r, format),
            };
            for b in rows {
                if format == Format::Json {
                    println!("{}", serde_json::to_string(&b)?);
                } else {
                    println!(
                        "{} {} {} ({}): ε spent {:.4} of {:.4} under the scene, {:.4} of {:.4} over all its DP scenes and nodes; {:.4} remaining ({} per query; {} queries charged; δ spent {:e})",
                        b.node,
                        b.scene,
                        b.actor,
                        b.org,
                        b.epsilon_spent,
                        b.epsilon_total,
                        b.requester_epsilon_spent,
                        b.requester_epsilon_total,
                        b.epsilon_remaining,
                        b.epsilon_per_query,
                        b.queries,
                        b.delta_spent
                    );
                }
            }
            Ok(0)
        }
        Command::Demo { keep } => demo::run(keep),
        Command::Id { action } => cli::id(action),
        Command::Consent { action } => cli::consent(action),
        Command::Contract { action } => cli::contract(action),
        Command::Airlock { action } => cli::airlock(action),
    }
}
