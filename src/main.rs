//! The `seibo-gate` command line: a thin layer over the library. Exit statuses follow
//! sysexits (`seibo_gate::ops::exit`, printed after `--help`): 0 success, 1 refused, 64 usage,
//! 78 config, and the others for data, I/O and permission errors.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use seibo_gate::admin::AdminRequest;
use seibo_gate::audit;
use seibo_gate::cli::{self, DEFAULT_CONFIG};
use seibo_gate::ops::exit::{self, UsageError};
use seibo_gate::registry::model::{StaffRole, SuspendReason, TerminalKind};

/// jemalloc instead of glibc's malloc: per-thread caches without glibc's fastbin consolidation
/// on the request path (bench/README.md, issue 16).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use seibo_gate::site::config::Config;
use seibo_gate::site::init::InitOptions;

#[derive(Parser, Debug)]
#[command(
    name = "seibo-gate",
    version,
    about = "Zero-trust gateway for the Seibo Net regional medical network",
    long_about = None,
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// The site's config file (gate.toml, as written by `seibo-gate init`).
    #[arg(long, global = true, env = "SEIBO_GATE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything on loopback with a sample EMR and print curl lines to try (Ctrl-C stops).
    Demo {
        /// Both sites of Seibo Net (hospital and clinic) on one regional registry: needs the
        /// `etcd` binary (Debian etcd-server); shows a consent given at the clinic used at the
        /// hospital and a withdrawal at the hospital refused at the clinic.
        #[arg(long)]
        network: bool,
    },
    /// Create a new site: config, terminal CA, server certificate, state directory; with
    /// --join, a site of a network from the bundle `site add` wrote.
    Init {
        /// Directory to create the site in (e.g. /etc/seibo-gate); never overwritten. With
        /// --join, default: the bundle's directory.
        #[arg(long, required_unless_present = "join")]
        dir: Option<PathBuf>,
        /// Join a network: the bundle `seibo-gate site add` wrote at the network's home (its
        /// site id, name and certificates are used; --site and --name are ignored).
        #[arg(long, value_name = "BUNDLE")]
        join: Option<PathBuf>,
        /// The site's id: letters, digits, '-' or '_' (shown in the audit and on pages).
        #[arg(long, default_value = "seiyo-hospital")]
        site: String,
        /// The site's name at the foot of every page (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Address the mutual-TLS listener binds.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The web EMR behind the gateway: http://HOST[:PORT] in the private segment.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        upstream: String,
        /// Private-segment network (repeatable); default: the upstream's address.
        #[arg(long = "private")]
        private: Vec<String>,
        /// Prometheus scrape endpoint, or "off".
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: String,
        /// Enable the WireGuard ingress on this UDP address (art 12.2).
        #[arg(long)]
        wireguard: Option<SocketAddr>,
    },
    /// The regional network (issue 14): created once at its home, the liaison office (art 6.2).
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// The network's sites: `site add` at the network's home writes another site's bundle.
    Site {
        #[command(subcommand)]
        cmd: SiteCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Validate a config and check that the service's user can read every file it names;
    /// names each bad key and file and exits 78 when something is wrong.
    CheckConfig {
        /// Check file access for this user (name or uid, from /etc/passwd and /etc/group)
        /// instead of the user running the command: root checks for the service user.
        #[arg(long = "as", value_name = "USER", conflicts_with = "no_files")]
        as_user: Option<String>,
        /// Validate the config alone, not the files it names (a config written for another
        /// machine, e.g. the examples in config/).
        #[arg(long)]
        no_files: bool,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Tests only: run on a clock stopped at this RFC 3339 instant. Honoured only with
        /// SEIBO_GATE_TEST_CLOCK=fixed-clock-for-tests-only in the environment, never under
        /// systemd.
        #[arg(long, hide = true)]
        test_clock: Option<String>,
    },
    /// User physicians (art 3, 4, 6.3, 7).
    Physician {
        #[command(subcommand)]
        cmd: PhysicianCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Registered terminals and their credentials (art 6.2, 12.7).
    Terminal {
        #[command(subcommand)]
        cmd: TerminalCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// The liaison office's console accounts (issue 15): staff certificate and password.
    Staff {
        #[command(subcommand)]
        cmd: StaffCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Patient consents (art 8, 9).
    Consent {
        #[command(subcommand)]
        cmd: ConsentCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// The site's own in-hospital EMR systems, trusted to assert the physician (art 6.1).
    SiteSystem {
        #[command(subcommand)]
        cmd: SiteSystemCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Print an nftables ruleset derived from the config (art 12.4, 12.5).
    Firewall {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Patient data deletion on request (art 11, form 8).
    Patient {
        #[command(subcommand)]
        cmd: PatientCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// The audit log (art 12.8).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// The registry backend: status, and moving registrations between sled and etcd.
    Registry {
        #[command(subcommand)]
        cmd: RegistryCmd,
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Delete consents whose access ended 999 days after the last view, and withdrawn ones (art 11).
    Purge {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Serve the sample EMR alone (tests and benchmarks).
    #[command(hide = true)]
    SampleEmr {
        /// Address to serve the sample EMR on (plain HTTP).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum StaffCmd {
    /// Add a staff account: writes the staff certificate (DIR/staff-ID.crt, .key, .p12; the
    /// .p12 password printed once) and prints a one-time password (changed at first sign-in).
    Add {
        /// The staff member's sign-in ID (e.g. clerk-tanaka).
        #[arg(long)]
        id: String,
        /// The staff member's name.
        #[arg(long)]
        name: String,
        /// clerk (registrations, consents, reports) or admin (also staff accounts).
        #[arg(long)]
        role: StaffRole,
        /// Directory for the certificate files (created 0700).
        #[arg(long)]
        out: PathBuf,
    },
    /// Suspend a staff account: the console refuses it from its next request on.
    Suspend {
        /// The staff member's ID.
        #[arg(long)]
        id: String,
    },
    /// List the staff accounts.
    List {
        /// Print the accounts as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RegistryCmd {
    /// Backend, revision applied, staleness and etcd members (exit 69 when not serving).
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every physician, terminal and consent as JSON lines (file mode 0600, never overwritten).
    Export {
        /// The file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a file from `registry export`, then add every record to this config's registry.
    Import {
        /// A JSON-lines file written by `registry export`.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum NetworkCmd {
    /// Create the network at its home: the regional terminal CA (name-constrained), the etcd
    /// CA, the first site's gateway and gate.toml, and the network's site list.
    Init {
        /// Directory to create the first site in (e.g. /etc/seibo-gate); never overwritten.
        #[arg(long)]
        dir: PathBuf,
        /// The network's id; the regional registry's etcd prefix is /ID/.
        #[arg(long, default_value = "seibo-net")]
        network: String,
        /// The first site's id.
        #[arg(long, default_value = "seiyo-hospital")]
        site: String,
        /// The first site's name at the foot of every page.
        #[arg(long)]
        name: Option<String>,
        /// A DNS name or address the site's gateway is reached at (repeatable; the first is
        /// the one other sites dial).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Address the mutual-TLS listener binds.
        #[arg(long, default_value = "0.0.0.0:443")]
        listen: SocketAddr,
        /// Address the read-only peer API binds (other sites' audit queries).
        #[arg(long, default_value = "0.0.0.0:8843")]
        peer_listen: SocketAddr,
        /// The web EMR behind the gateway: http://HOST[:PORT] in the private segment.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        upstream: String,
        /// Private-segment network (repeatable); default: the upstream's address.
        #[arg(long = "private")]
        private: Vec<String>,
        /// Prometheus scrape endpoint, or "off".
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: String,
        /// Enable the WireGuard ingress on this UDP address (art 12.2).
        #[arg(long)]
        wireguard: Option<SocketAddr>,
        /// The regional registry's etcd client URL (repeatable), e.g. https://10.20.0.7:2379.
        #[arg(long = "etcd", required = true)]
        etcd: Vec<String>,
        /// A DNS domain or IP network the regional CA may vouch for (repeatable): every
        /// site's hosts must lie inside. Default: the first site's hosts (+ 10.77.0.0/16,
        /// the WireGuard network, always).
        #[arg(long)]
        permit: Vec<String>,
    },
    /// At the network's home: an etcd member's certificate (server and client) from the
    /// network's etcd CA, for the regional registry's members (--cert-file, --peer-cert-file;
    /// etcd-ca.crt as --trusted-ca-file and --peer-trusted-ca-file).
    EtcdMember(EtcdMemberArgs),
}

#[derive(Args, Debug)]
struct EtcdMemberArgs {
    /// The member's name (names its files; its certificate's CN).
    #[arg(long)]
    name: String,
    /// An address or DNS name its client and peer URLs use (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Directory for NAME.crt, NAME.key and etcd-ca.crt (created 0700).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    cfg: ConfigArg,
}

#[derive(Subcommand, Debug)]
enum SiteCmd {
    /// At the network's home: issue another site's certificates and etcd credentials and
    /// write its bundle (for `seibo-gate init --join BUNDLE` there).
    Add {
        /// The new site's id (e.g. nomura-clinic).
        #[arg(long)]
        site: String,
        /// Its name at the foot of every page.
        #[arg(long)]
        name: Option<String>,
        /// A DNS name or address its gateway is reached at (repeatable; the first is the one
        /// other sites dial).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Address its read-only peer API binds.
        #[arg(long, default_value = "0.0.0.0:8843")]
        peer_listen: SocketAddr,
        /// Its WireGuard ingress's UDP address (art 12.2), when it has one.
        #[arg(long)]
        wireguard: Option<SocketAddr>,
        /// The bundle's directory (new or empty; created 0700).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PhysicianCmd {
    /// Register a physician; prints a one-time initial password to change at first sign-in.
    Add {
        /// The physician's sign-in ID (e.g. dr-nomura).
        #[arg(long)]
        id: String,
        /// The physician's name as shown on pages and certificates.
        #[arg(long)]
        name: String,
        /// The physician's own site, when not this one.
        #[arg(long)]
        site: Option<String>,
        /// Read the initial password from standard input (first line) instead.
        #[arg(long)]
        password_stdin: bool,
        /// The reference of the registration application (form 3), kept in the audit.
        #[arg(long)]
        form_ref: Option<String>,
    },
    /// Reset the password to a new one-time one; ends the physician's sessions.
    Passwd {
        /// The physician's ID.
        #[arg(long)]
        id: String,
        /// Read the new password from standard input (first line) instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Suspend a physician (art 4): refused from the next request on, sessions ended.
    Suspend {
        /// The physician's ID.
        #[arg(long)]
        id: String,
        /// retirement | request | violation (art 4)
        #[arg(long)]
        reason: SuspendReason,
        /// The reference of the notice (form 9), kept in the audit.
        #[arg(long)]
        form_ref: Option<String>,
    },
    /// Lift a suspension.
    Resume {
        /// The physician's ID.
        #[arg(long)]
        id: String,
    },
    /// Deregister a physician (form 9): their terminals are deleted too (art 7).
    Delete {
        /// The physician's ID.
        #[arg(long)]
        id: String,
        /// The reference of the notice (form 9), kept in the audit.
        #[arg(long)]
        form_ref: Option<String>,
    },
    /// List registered physicians and whether each is active or suspended.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TerminalCmd {
    /// Issue a client certificate (NAME.crt, NAME.key, NAME.p12) and register the terminal;
    /// with --wireguard, a WireGuard key pair and NAME.conf for the official clients instead.
    Add {
        /// The registered physician who uses this terminal.
        #[arg(long)]
        physician: String,
        /// The terminal's name (letters, digits, '.', '_', '-'); names the files written.
        #[arg(long)]
        name: String,
        /// Directory to write the credential files to (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// A WireGuard terminal (art 12.2): writes NAME.conf instead of a certificate.
        #[arg(long)]
        wireguard: bool,
    },
    /// Revoke a terminal: refused from its next request on (art 12.7).
    Revoke {
        /// The terminal's name.
        #[arg(long)]
        name: String,
    },
    /// List registered terminals.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SiteSystemCmd {
    /// Issue a site-system client certificate (NAME.crt, NAME.key, NAME.p12) and register it.
    Add {
        /// The site system's name; names the files written.
        #[arg(long)]
        name: String,
        /// Directory to write the credential files to (created 0700).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a site system's certificate.
    Revoke {
        /// The site system's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConsentCmd {
    /// Register a consent (form 6).
    Grant {
        /// The patient's id in the EMR (as in its URLs).
        #[arg(long)]
        patient: String,
        /// patient | relative | guardian (art 8.1)
        #[arg(long)]
        by: String,
        /// For a relative: e.g. "spouse", "child (1st degree)", "in-law (2nd degree)".
        #[arg(long)]
        relation: Option<String>,
        /// Publication date YYYY-MM-DD (Japan); more than [admin] future_grace_days ahead
        /// needs --allow-future.
        #[arg(long)]
        published: String,
        /// Accept a publication date further in the future than the grace.
        #[arg(long)]
        allow_future: bool,
        /// The patient declined the automatic extension (art 8.3).
        #[arg(long)]
        no_extension: bool,
        /// The reference of the paper consent form (form 6), e.g. 様式6-123.
        #[arg(long)]
        form_ref: String,
        /// The patient's id in another site's EMR, SITE:ID (repeatable): the consent holds
        /// there too (e.g. --link nomura-clinic:N-778).
        #[arg(long = "link")]
        links: Vec<String>,
        /// The reference of the explanation form (form 5); needs --explained-by.
        #[arg(long, requires = "explained_by")]
        explanation_form: Option<String>,
        /// The physician who explained (their ID); needs --explanation-form.
        #[arg(long, requires = "explanation_form")]
        explained_by: Option<String>,
    },
    /// A later "do not extend" request (art 8.3): views no longer extend the consent.
    NoExtension {
        /// The patient's id in this site's EMR.
        #[arg(long)]
        patient: String,
        /// The reference of the request.
        #[arg(long)]
        form_ref: String,
    },
    /// Register a withdrawal (form 7): access stops at the next request.
    Withdraw {
        /// The patient's id.
        #[arg(long)]
        patient: String,
        /// The reference of the withdrawal form (form 7).
        #[arg(long)]
        form_ref: String,
        /// Who withdrew: patient | relative | guardian (recorded in the audit).
        #[arg(long)]
        by: Option<String>,
        /// For --by relative: the relation (art 8.1), e.g. spouse, blood:2, in-law:1.
        #[arg(long)]
        relation: Option<String>,
    },
    /// Show a patient's consent and whether viewing is allowed today.
    Show {
        /// The patient's id.
        #[arg(long)]
        patient: String,
        /// Compact JSON instead of indented.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PatientCmd {
    /// Link this site's patient to their id in another site's EMR (SITE:ID): the patient's
    /// consent then holds at that site too. One id per site.
    Link {
        /// The patient's id in this site's EMR.
        #[arg(long)]
        patient: String,
        /// The patient's id at another site, SITE:ID (e.g. nomura-clinic:N-778).
        #[arg(long)]
        link: String,
    },
    /// Delete a patient's registered data (form 8); the audit history stays.
    Delete {
        /// The patient's id.
        #[arg(long)]
        patient: String,
        /// The reference of the deletion request (form 8).
        #[arg(long)]
        form_ref: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Records, oldest first; JSON lines with --json. With --patient it reads the index
    /// (audit.idx) and the lines it names, checked against the log; otherwise the whole log.
    Query {
        /// Only this patient's records. With --network: SITE:ID, repeatable (the patient's
        /// id in each site's EMR); a bare ID is asked of every site not named.
        #[arg(long)]
        patient: Vec<String>,
        /// Only this physician's records.
        #[arg(long)]
        physician: Option<String>,
        /// From this time on (inclusive): RFC 3339 time or YYYY-MM-DD (Japan).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (exclusive): RFC 3339 time or YYYY-MM-DD (Japan); after --since.
        #[arg(long)]
        until: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Read the whole log, not the index.
        #[arg(long, conflicts_with = "network")]
        full_scan: bool,
        /// Ask every site of [network] over the peer API (mutual TLS with this site's
        /// gateway certificate) and merge the rows by time, the site on each; a site that
        /// does not answer is named and the exit status is 69.
        #[arg(long)]
        network: bool,
    },
    /// Check the hash chain, the head anchor and the index (which must be there); exits
    /// non-zero naming the first broken record. The chain is not keyed: record `audit head`
    /// elsewhere and check it here with --head (docs/security.md says what each detects).
    Verify {
        /// Derive the index (audit.idx) again from the log first (with the gateway stopped).
        #[arg(long)]
        rebuild_index: bool,
        /// A head recorded earlier, SEQ:HASH as `audit head` prints it (or HASH alone): the
        /// log must still contain it at that line.
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<audit::RecordedHead>,
    },
    /// Print the current head of the verified chain as SEQ:HASH, to record somewhere this
    /// machine cannot write; `audit verify --head SEQ:HASH` checks the log still contains it.
    Head,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; every usage error is EX_USAGE (not clap's 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_tracing(matches!(
        cli.command,
        Command::Serve { .. } | Command::Demo { .. }
    ));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seibo-gate: cannot start the runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once: our error types already name their source in their message.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("seibo-gate: {msg}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}

fn init_tracing(service: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if service { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("SEIBO_GATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Runs the parsed command: each subcommand is one call into [`seibo_gate::cli`].
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Nothing the service or an admin command creates is for group or others (issue 11
    // item 17); `init` sets its own modes (public certificates stay readable).
    if !matches!(
        cli.command,
        Command::Init { .. }
            | Command::SampleEmr { .. }
            | Command::Network { .. }
            | Command::Site { .. }
    ) {
        seibo_gate::site::fsmode::restrict_umask();
    }
    match cli.command {
        Command::Demo { network: false } => {
            seibo_gate::ops::demo::run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { network: true } => {
            seibo_gate::ops::demo_network::run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SampleEmr { listen } => {
            seibo_gate::ops::demo::run_sample_emr(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Network { cmd } => network(cmd),
        Command::Site { cmd, cfg } => {
            let home = cli::load(&cfg.config)?;
            let SiteCmd::Add {
                site,
                name,
                hosts,
                peer_listen,
                wireguard,
                out,
            } = cmd;
            let o = seibo_gate::site::network::SiteAddOptions {
                site,
                name,
                hosts,
                peer_listen,
                wireguard,
                out,
            };
            cli::network::add(&home, &o)
        }
        Command::Init {
            dir,
            join,
            site,
            name,
            listen,
            upstream,
            private,
            metrics,
            wireguard,
        } => {
            let dir = match (dir, &join) {
                (Some(d), _) => d,
                (None, Some(bundle)) => bundle.clone(),
                (None, None) => return Err(UsageError("--dir DIR is required".into()).into()),
            };
            let mut o = InitOptions::new(&dir);
            o.wireguard = wireguard;
            o.metrics = parse_metrics(&metrics)?;
            o.site = site;
            o.name = name;
            o.listen = listen;
            o.upstream = upstream;
            o.private = private;
            match join {
                Some(bundle) => cli::network::join(&bundle, &o),
                None => cli::init(&o),
            }
        }
        Command::CheckConfig {
            as_user,
            no_files,
            cfg,
        } => cli::check::run(&cfg.config, as_user.as_deref(), no_files).await,
        Command::Serve { cfg, test_clock } => {
            cli::serve(cli::load(&cfg.config)?, test_clock.as_deref()).await
        }
        Command::Physician { cmd, cfg } => physician(cmd, &cli::load(&cfg.config)?).await,
        Command::Terminal { cmd, cfg } => terminal(cmd, &cli::load(&cfg.config)?).await,
        Command::SiteSystem { cmd, cfg } => {
            let c = cli::load(&cfg.config)?;
            match cmd {
                SiteSystemCmd::Add { name, out } => {
                    cli::terminal::add(&c, TerminalKind::SiteSystem, "", &name, &out).await
                }
                SiteSystemCmd::Revoke { name } => {
                    cli::call_and_report(&c, AdminRequest::TerminalRevoke { name }).await
                }
            }
        }
        Command::Firewall { cfg } => cli::firewall(&cli::load(&cfg.config)?),
        Command::Consent { cmd, cfg } => consent(cmd, &cli::load(&cfg.config)?).await,
        Command::Staff { cmd, cfg } => {
            let c = cli::load(&cfg.config)?;
            match cmd {
                StaffCmd::Add {
                    id,
                    name,
                    role,
                    out,
                } => cli::staff::add(&c, id, name, role, &out).await,
                StaffCmd::Suspend { id } => {
                    cli::call_and_report(&c, AdminRequest::StaffSuspend { id }).await
                }
                StaffCmd::List { json } => cli::staff::list(&c, json).await,
            }
        }
        Command::Patient { cmd, cfg } => {
            let c = cli::load(&cfg.config)?;
            let req = match cmd {
                PatientCmd::Delete { patient, form_ref } => {
                    AdminRequest::PatientDelete { patient, form_ref }
                }
                PatientCmd::Link { patient, link } => AdminRequest::PatientLink { patient, link },
            };
            cli::call_and_report(&c, req).await
        }
        Command::Purge { cfg } => {
            cli::call_and_report(&cli::load(&cfg.config)?, AdminRequest::Purge {}).await
        }
        Command::Audit { cmd, cfg } => audit(cmd, &cli::load(&cfg.config)?).await,
        Command::Registry { cmd, cfg } => {
            let c = cli::load(&cfg.config)?;
            match cmd {
                RegistryCmd::Status { json } => cli::registry::status(&c, json).await,
                RegistryCmd::Export { out } => cli::registry::export(&c, &out).await,
                RegistryCmd::Import { file } => cli::registry::import(&c, &file).await,
            }
        }
    }
}

/// `audit query --patient` without --network: one id at most.
fn one_patient(mut p: Vec<String>) -> anyhow::Result<Option<String>> {
    if p.len() > 1 {
        return Err(UsageError(
            "--patient: one patient at most (several, SITE:ID each, with --network)".into(),
        )
        .into());
    }
    Ok(p.pop())
}

/// `--metrics ADDR:PORT` or `off`.
fn parse_metrics(m: &str) -> anyhow::Result<Option<SocketAddr>> {
    match m {
        "off" => Ok(None),
        m => Ok(Some(m.parse().map_err(|e| {
            UsageError(format!("--metrics {m:?}: not ADDR:PORT or \"off\": {e}"))
        })?)),
    }
}

fn network(cmd: NetworkCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NetworkCmd::EtcdMember(a) => {
            cli::network::etcd_member(&cli::load(&a.cfg.config)?, &a.name, &a.hosts, &a.out)
        }
        NetworkCmd::Init {
            dir,
            network,
            site,
            name,
            hosts,
            listen,
            peer_listen,
            upstream,
            private,
            metrics,
            wireguard,
            etcd,
            permit,
        } => {
            let mut o = InitOptions::new(&dir);
            o.wireguard = wireguard;
            o.metrics = parse_metrics(&metrics)?;
            o.site = site;
            o.name = name;
            o.listen = listen;
            o.upstream = upstream;
            o.private = private;
            cli::network::init(&seibo_gate::site::network::NetworkInitOptions {
                site: o,
                network,
                hosts,
                peer_listen,
                etcd,
                permit,
            })
        }
    }
}

async fn physician(cmd: PhysicianCmd, c: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        PhysicianCmd::Add {
            id,
            name,
            site,
            password_stdin,
            form_ref,
        } => cli::physician::add(c, id, name, site, password_stdin, form_ref).await,
        PhysicianCmd::Passwd { id, password_stdin } => {
            cli::physician::passwd(c, id, password_stdin).await
        }
        PhysicianCmd::Suspend {
            id,
            reason,
            form_ref,
        } => {
            let req = AdminRequest::PhysicianSuspend {
                id,
                reason,
                form_ref,
            };
            cli::call_and_report(c, req).await
        }
        PhysicianCmd::Resume { id } => {
            cli::call_and_report(c, AdminRequest::PhysicianResume { id }).await
        }
        PhysicianCmd::Delete { id, form_ref } => {
            cli::call_and_report(c, AdminRequest::PhysicianDelete { id, form_ref }).await
        }
        PhysicianCmd::List { json } => cli::physician::list(c, json).await,
    }
}

async fn terminal(cmd: TerminalCmd, c: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        TerminalCmd::Add {
            physician,
            name,
            out,
            wireguard: false,
        } => cli::terminal::add(c, TerminalKind::Terminal, &physician, &name, &out).await,
        TerminalCmd::Add {
            physician,
            name,
            out,
            wireguard: true,
        } => cli::terminal::add_wireguard(c, &physician, &name, &out).await,
        TerminalCmd::Revoke { name } => {
            cli::call_and_report(c, AdminRequest::TerminalRevoke { name }).await
        }
        TerminalCmd::List { json } => cli::terminal::list(c, json).await,
    }
}

async fn consent(cmd: ConsentCmd, c: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        ConsentCmd::Grant {
            patient,
            by,
            relation,
            published,
            allow_future,
            no_extension,
            form_ref,
            links,
            explanation_form,
            explained_by,
        } => {
            let g = cli::consent::Grant {
                patient,
                by,
                relation,
                published,
                allow_future,
                no_extension,
                form_ref,
                links,
                explanation: explanation_form
                    .zip(explained_by)
                    .map(
                        |(form_ref, physician)| seibo_gate::registry::model::Explanation {
                            form_ref,
                            physician,
                        },
                    ),
            };
            cli::consent::grant(c, g).await
        }
        ConsentCmd::Withdraw {
            patient,
            form_ref,
            by,
            relation,
        } => {
            let by = by
                .map(|b| cli::consent::consent_by(&b, relation))
                .transpose()?;
            let req = AdminRequest::ConsentWithdraw {
                patient,
                form_ref,
                by,
            };
            cli::call_and_report(c, req).await
        }
        ConsentCmd::NoExtension { patient, form_ref } => {
            let req = AdminRequest::ConsentNoExtension { patient, form_ref };
            cli::call_and_report(c, req).await
        }
        ConsentCmd::Show { patient, json } => cli::consent::show(c, patient, json).await,
    }
}

async fn audit(cmd: AuditCmd, c: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            rebuild_index,
            head,
        } => cli::audit::verify_witnessed(c, rebuild_index, head).await,
        AuditCmd::Head => Ok(cli::audit::head(c)),
        AuditCmd::Query {
            patient,
            physician,
            since,
            until,
            json,
            full_scan: _,
            network: true,
        } => {
            let q = cli::audit_network::NetworkQuery {
                patients: patient,
                physician,
                since,
                until,
                json,
            };
            cli::audit_network::query(c, q).await
        }
        AuditCmd::Query {
            patient,
            physician,
            since,
            until,
            json,
            full_scan,
            network: false,
        } => cli::audit::query(
            c,
            cli::audit::Query {
                patient: one_patient(patient)?,
                physician,
                since,
                until,
                json,
                full_scan,
            },
        ),
    }
}

#[cfg(test)]
#[path = "main/tests.rs"]
mod tests;
