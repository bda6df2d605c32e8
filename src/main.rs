//! The `seibo-gate` command line: a thin layer over the library. Exit statuses follow
//! sysexits (`seibo_gate::exit`, printed after `--help`): 0 success, 1 refused, 64 usage,
//! 78 config, and the others for data, I/O and permission errors.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use seibo_gate::admin::{self, Admin, AdminRequest, AdminResponse};
use seibo_gate::audit::{self, AuditLog, QueryFilter};
use seibo_gate::clock::{self, Clock, SharedClock, SystemClock};
use seibo_gate::config::{Config, ConfigError};
use seibo_gate::exit::{self, ConfigProblem, DataError, UsageError};
use seibo_gate::init::{self, InitOptions};
use seibo_gate::model::{ConsentBy, SuspendReason, Terminal, TerminalKind};
use seibo_gate::pki::{Ca, ClientKind};
use seibo_gate::store::Store;

const DEFAULT_CONFIG: &str = "/etc/seibo-gate/gate.toml";

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
    Demo,
    /// Create a new site: config, terminal CA, server certificate, state directory.
    Init {
        /// Directory to create the site in (e.g. /etc/seibo-gate); never overwritten.
        #[arg(long)]
        dir: PathBuf,
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
    },
    /// Register a withdrawal (form 7): access stops at the next request.
    Withdraw {
        /// The patient's id.
        #[arg(long)]
        patient: String,
        /// The reference of the withdrawal form (form 7).
        #[arg(long)]
        form_ref: String,
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
        /// Only this patient's records.
        #[arg(long)]
        patient: Option<String>,
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
        #[arg(long)]
        full_scan: bool,
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
    init_tracing(matches!(cli.command, Command::Serve { .. } | Command::Demo));
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

/// A config that cannot be read, with how to point at the right one.
#[derive(Debug, thiserror::Error)]
#[error("{source}\n  {hint}")]
struct ConfigNotRead {
    #[source]
    source: ConfigError,
    hint: String,
}

fn load(cfg: &ConfigArg) -> anyhow::Result<Config> {
    Config::load(&cfg.config).map_err(|e| match &e {
        ConfigError::Read { source, .. } => {
            let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
                "the config must be readable by whoever runs this: root for admin commands, the \
                 service's group for serve and check-config (chgrp seibo-gate FILE && chmod 0640 FILE)"
                    .to_string()
            } else {
                format!(
                    "which site? name its config with --config PATH or SEIBO_GATE_CONFIG=PATH \
                     (default {DEFAULT_CONFIG}); `seibo-gate init --dir DIR` creates a new site"
                )
            };
            anyhow::Error::new(ConfigNotRead { source: e, hint })
        }
        _ => e.into(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Nothing the service or an admin command creates is for group or others (issue 11
    // item 17); `init` sets its own modes (public certificates stay readable).
    if !matches!(
        cli.command,
        Command::Init { .. } | Command::SampleEmr { .. }
    ) {
        seibo_gate::fsmode::restrict_umask();
    }
    match cli.command {
        Command::Demo => {
            seibo_gate::demo::run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SampleEmr { listen } => {
            seibo_gate::demo::run_sample_emr(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            dir,
            site,
            name,
            listen,
            upstream,
            private,
            metrics,
            wireguard,
        } => {
            let mut o = InitOptions::new(&dir);
            o.wireguard = wireguard;
            o.metrics = match metrics.as_str() {
                "off" => None,
                m => Some(m.parse().map_err(|e| {
                    UsageError(format!("--metrics {m:?}: not ADDR:PORT or \"off\": {e}"))
                })?),
            };
            o.site = site;
            o.name = name;
            o.listen = listen;
            o.upstream = upstream;
            o.private = private;
            let p = init::init(&o)?;
            println!("site created: {}", p.display());
            println!("next: seibo-gate serve --config {}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig {
            as_user,
            no_files,
            cfg,
        } => {
            let c = load(&cfg)?;
            if !no_files {
                check_files(&c, as_user.as_deref())?;
            }
            println!(
                "{}: ok (site {}, {} listener(s), {} route(s), upstream {})",
                cfg.config.display(),
                c.site.id,
                c.listeners.len(),
                c.routes.len(),
                c.upstream.authority
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { cfg, test_clock } => {
            let c = load(&cfg)?;
            let clock = clock::serve_clock(test_clock.as_deref(), |k| std::env::var(k).ok())?;
            let (trigger, _) = seibo_gate::shutdown::channel();
            let serve = seibo_gate::server::serve(c, clock, &trigger, |_| {});
            tokio::pin!(serve);
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = &mut serve => r?,
                _ = tokio::signal::ctrl_c() => { trigger.fire(); serve.await? }
                _ = term.recv() => { trigger.fire(); serve.await? }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Physician { cmd, cfg } => {
            let c = load(&cfg)?;
            let (req, json) = match cmd {
                PhysicianCmd::Add {
                    id,
                    name,
                    site,
                    password_stdin,
                } => {
                    let (password, shown) = initial_password(password_stdin)?;
                    let r = admin_call(
                        &c,
                        AdminRequest::PhysicianAdd {
                            id,
                            name,
                            site,
                            password_hash: Some(seibo_gate::auth::hash_password(&password)?),
                        },
                    )
                    .await?;
                    if r.ok && shown {
                        println!("{}", r.message);
                        println!("initial password (shown once; to be changed at first sign-in): {password}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Ok(report(r, false));
                }
                PhysicianCmd::Passwd { id, password_stdin } => {
                    let (password, shown) = initial_password(password_stdin)?;
                    let r = admin_call(
                        &c,
                        AdminRequest::PhysicianPasswd {
                            id,
                            password_hash: seibo_gate::auth::hash_password(&password)?,
                        },
                    )
                    .await?;
                    if r.ok && shown {
                        println!("{}", r.message);
                        println!("new one-time password (shown once): {password}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Ok(report(r, false));
                }
                PhysicianCmd::Suspend { id, reason } => {
                    (AdminRequest::PhysicianSuspend { id, reason }, false)
                }
                PhysicianCmd::Resume { id } => (AdminRequest::PhysicianResume { id }, false),
                PhysicianCmd::Delete { id } => (AdminRequest::PhysicianDelete { id }, false),
                PhysicianCmd::List { json } => (AdminRequest::PhysicianList {}, json),
            };
            let list = matches!(req, AdminRequest::PhysicianList {});
            let r = admin_call(&c, req).await?;
            if list && !json && r.ok {
                print_physicians(r.reply()?);
                return Ok(ExitCode::SUCCESS);
            }
            Ok(report(r, json))
        }
        Command::Terminal { cmd, cfg } => {
            let c = load(&cfg)?;
            match cmd {
                TerminalCmd::Add {
                    physician,
                    name,
                    out,
                    wireguard: false,
                } => terminal_add(&c, TerminalKind::Terminal, &physician, &name, &out).await,
                TerminalCmd::Add {
                    physician,
                    name,
                    out,
                    wireguard: true,
                } => terminal_add_wireguard(&c, &physician, &name, &out).await,
                TerminalCmd::Revoke { name } => Ok(report(
                    admin_call(&c, AdminRequest::TerminalRevoke { name }).await?,
                    false,
                )),
                TerminalCmd::List { json } => {
                    let r = admin_call(&c, AdminRequest::TerminalList {}).await?;
                    if !json && r.ok {
                        print_terminals(r.reply()?);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Ok(report(r, json))
                }
            }
        }
        Command::SiteSystem { cmd, cfg } => {
            let c = load(&cfg)?;
            match cmd {
                SiteSystemCmd::Add { name, out } => {
                    terminal_add(&c, TerminalKind::SiteSystem, "", &name, &out).await
                }
                SiteSystemCmd::Revoke { name } => Ok(report(
                    admin_call(&c, AdminRequest::TerminalRevoke { name }).await?,
                    false,
                )),
            }
        }
        Command::Firewall { cfg } => {
            let c = load(&cfg)?;
            print!("{}", seibo_gate::firewall::ruleset(&c)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Consent { cmd, cfg } => {
            let c = load(&cfg)?;
            let (req, json) = match cmd {
                ConsentCmd::Grant {
                    patient,
                    by,
                    relation,
                    published,
                    allow_future,
                    no_extension,
                    form_ref,
                } => {
                    let by = match (by.as_str(), relation) {
                        ("patient", None) => ConsentBy::Patient,
                        ("guardian", None) => ConsentBy::Guardian,
                        ("relative", Some(r)) => ConsentBy::Relative(r),
                        ("relative", None) => return Err(UsageError("--by relative needs --relation (art 8.1: blood relative within the 6th degree, spouse, or in-law within the 3rd degree)".into()).into()),
                        ("patient" | "guardian", Some(_)) => return Err(UsageError("--relation is only for --by relative".into()).into()),
                        (other, _) => return Err(UsageError(format!("--by {other:?}: use patient, relative or guardian (art 8.1)")).into()),
                    };
                    let published = seibo_gate::dates::publication(
                        &published,
                        SystemClock.today(),
                        c.future_grace_days,
                        allow_future,
                    )
                    .map_err(UsageError)?;
                    (
                        AdminRequest::ConsentGrant {
                            patient,
                            by,
                            published,
                            no_extension,
                            form_ref,
                        },
                        false,
                    )
                }
                ConsentCmd::Withdraw { patient, form_ref } => {
                    (AdminRequest::ConsentWithdraw { patient, form_ref }, false)
                }
                ConsentCmd::Show { patient, json } => (AdminRequest::ConsentShow { patient }, json),
            };
            let show = matches!(req, AdminRequest::ConsentShow { .. });
            let r = admin_call(&c, req).await?;
            if show && !json && r.ok {
                println!("{}", serde_json::to_string_pretty(&r.data)?);
                return Ok(ExitCode::SUCCESS);
            }
            Ok(report(r, json))
        }
        Command::Patient { cmd, cfg } => {
            let c = load(&cfg)?;
            let PatientCmd::Delete { patient, form_ref } = cmd;
            Ok(report(
                admin_call(&c, AdminRequest::PatientDelete { patient, form_ref }).await?,
                false,
            ))
        }
        Command::Purge { cfg } => {
            let c = load(&cfg)?;
            Ok(report(admin_call(&c, AdminRequest::Purge {}).await?, false))
        }
        Command::Audit { cmd, cfg } => {
            let c = load(&cfg)?;
            let dir = c.state_dir.join("audit");
            match cmd {
                AuditCmd::Verify {
                    rebuild_index,
                    head,
                } => audit_verify(&c, &dir, rebuild_index, head),
                AuditCmd::Head => {
                    let opts = audit::VerifyOptions {
                        index_optional: true,
                        head: None,
                    };
                    match audit::verify_with(&dir, &opts) {
                        Ok(r) => {
                            println!("{}:{}", r.records, r.head);
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(e) => {
                            eprintln!("audit log BROKEN (no head to record): {e}");
                            Ok(ExitCode::FAILURE)
                        }
                    }
                }
                AuditCmd::Query {
                    patient,
                    physician,
                    since,
                    until,
                    json,
                    full_scan,
                } => {
                    let parse = |s: Option<String>, key: &str| -> anyhow::Result<_> {
                        s.map(|s| {
                            audit::parse_time_arg(&s)
                                .map_err(|e| UsageError(format!("--{key}: {e}")))
                        })
                        .transpose()
                        .map_err(Into::into)
                    };
                    let (since, until) = (parse(since, "since")?, parse(until, "until")?);
                    seibo_gate::dates::query_range(
                        since,
                        until,
                        SystemClock.now(),
                        c.future_grace_days,
                    )
                    .map_err(UsageError)?;
                    let filter = QueryFilter {
                        patient,
                        physician,
                        since,
                        until,
                    };
                    let rows = if full_scan {
                        audit::query_full_scan(&dir, &filter)?
                    } else {
                        audit::query(&dir, &filter)?
                    };
                    let mut out = std::io::stdout().lock();
                    use std::io::Write;
                    for r in &rows {
                        if json {
                            serde_json::to_writer(&mut out, r)?;
                            writeln!(out)?;
                        } else {
                            let q = &r.request;
                            writeln!(
                                out,
                                "{} {:<5} {:<26} {:<7} phys={} term={} patient={} {} {} → {}",
                                q.time,
                                q.decision,
                                q.reason,
                                q.ingress,
                                q.physician.as_deref().unwrap_or("-"),
                                q.terminal.as_deref().unwrap_or("-"),
                                q.patient.as_deref().unwrap_or("-"),
                                q.method,
                                q.path,
                                r.status
                                    .map(|s| s.to_string())
                                    .unwrap_or_else(|| "-".into())
                            )?;
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

/// What `serve` checks before it starts, done by `check-config` (which the unit runs first):
/// the user the service runs as (`as_user`, else the caller) can read every file the config
/// names and owns the state, private keys are not open to others, and every certificate and
/// key loads.
fn check_files(c: &Config, as_user: Option<&str>) -> anyhow::Result<()> {
    use seibo_gate::filecheck::{self, Principal, PrincipalError};
    let who = match as_user {
        Some(u) => Principal::named(u).map_err(|e| match e {
            PrincipalError::UnknownUser(_) => anyhow::Error::new(UsageError(e.to_string())),
            e => e.into(),
        })?,
        None => Principal::current()?,
    };
    filecheck::check(c, &who)?;
    seibo_gate::server::check_key_modes_for(c, Some(&who))?;
    for l in &c.listeners {
        seibo_gate::tls::server_config(&l.cert, &l.key, &c.ca.cert)
            .map_err(|e| ConfigProblem(format!("listener {}: {e}", l.name)))?;
    }
    if let Some(wg) = &c.wireguard {
        seibo_gate::tls::server_config(&wg.cert, &wg.key, &c.ca.cert)
            .map_err(|e| ConfigProblem(format!("wireguard (in-tunnel TLS): {e}")))?;
        let key = std::fs::read_to_string(&wg.private_key).map_err(|e| {
            ConfigProblem(format!(
                "wireguard.private_key {}: {e}",
                wg.private_key.display()
            ))
        })?;
        seibo_gate::wireguard::key_from_base64(key.trim()).map_err(|e| {
            ConfigProblem(format!(
                "wireguard.private_key {}: {e}",
                wg.private_key.display()
            ))
        })?;
    }
    Ok(())
}

/// `audit verify [--rebuild-index] [--head SEQ:HASH]`.
fn audit_verify(
    c: &Config,
    dir: &Path,
    rebuild_index: bool,
    head: Option<audit::RecordedHead>,
) -> anyhow::Result<ExitCode> {
    if rebuild_index {
        if std::os::unix::net::UnixStream::connect(&c.admin_socket).is_ok() {
            eprintln!(
                "seibo-gate: a gateway is running (it answers on {}): it keeps the index itself and rebuilds it at every start; stop it before --rebuild-index",
                c.admin_socket.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        match audit::rebuild_index(dir) {
            Ok(n) => println!("audit index rebuilt from the log: {n} lines"),
            Err(e) => {
                eprintln!("audit index NOT rebuilt: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let opts = audit::VerifyOptions {
        index_optional: false,
        head,
    };
    match audit::verify_with(dir, &opts) {
        Ok(r) => {
            let witnessed = head
                .map(|h| format!("; contains the recorded head {h}"))
                .unwrap_or_default();
            println!(
                "audit log intact: {} records, head {}:{}{witnessed}",
                r.records, r.records, r.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ audit::VerifyError::Index(_)) => {
            eprintln!("audit index WRONG (the log is the record; `audit verify --rebuild-index` with the gateway stopped, or its next start, derives the index again): {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e @ audit::VerifyError::HeadMismatch(_)) => {
            eprintln!("audit log REWRITTEN: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("audit log BROKEN: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints an admin response; exit 1 when refused.
fn report(r: AdminResponse, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string(&r.data).unwrap_or_default());
    } else if r.ok {
        println!("{}", r.message);
    }
    if r.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("seibo-gate: {}", r.message);
        ExitCode::FAILURE
    }
}

fn print_physicians(list: Vec<seibo_gate::model::Physician>) {
    for p in list {
        println!(
            "{:<20} {:<24} {:<16} {}",
            p.id,
            p.name,
            p.site,
            p.suspended
                .map(|r| format!("suspended ({})", r.as_str()))
                .unwrap_or_else(|| "active".into())
        );
    }
}

fn print_terminals(list: Vec<Terminal>) {
    for t in list {
        println!(
            "{:<20} {:<20} {} {}",
            t.name,
            t.physician,
            t.not_after_rfc3339(),
            if t.revoked { "revoked" } else { "active" }
        );
    }
}

/// Sends a request to the running gateway, or executes it directly when none runs.
async fn admin_call(cfg: &Config, req: AdminRequest) -> anyhow::Result<AdminResponse> {
    if let Some(r) = admin::call(&cfg.admin_socket, &req).await? {
        return Ok(r);
    }
    let store = Store::open(&cfg.state_dir.join("registry")).with_context(|| {
        format!(
            "no gateway answers on {} and the store cannot be opened",
            cfg.admin_socket.display()
        )
    })?;
    seibo_gate::server::prepare_state_dir(&cfg.state_dir)?;
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let clock: SharedClock = Arc::new(SystemClock);
    let a = Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock,
        metrics: None,
        origin: "cli",
        sessions: None,
        terminals_changed: None,
    };
    let r = a.execute(req).await;
    audit.close().await?;
    store.flush()?;
    Ok(r)
}

/// The physician's name when registered; otherwise says why on stderr and gives `None`
/// (a credential is issued only to a registered physician).
async fn registered_physician(cfg: &Config, id: &str) -> anyhow::Result<Option<String>> {
    let r = admin_call(cfg, AdminRequest::PhysicianGet { id: id.to_string() }).await?;
    if !r.ok {
        eprintln!("seibo-gate: {}", r.message);
        return Ok(None);
    }
    let p: Option<seibo_gate::model::Physician> = r.reply().ok();
    Ok(Some(p.map_or_else(|| id.to_string(), |p| p.name)))
}

/// The initial password: generated and shown, or read from standard input.
fn initial_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((seibo_gate::auth::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.chars().count() < 10 {
        return Err(DataError(
            "the password read from standard input is shorter than 10 characters".into(),
        )
        .into());
    }
    Ok((p, false))
}

async fn terminal_add(
    cfg: &Config,
    kind: TerminalKind,
    physician: &str,
    name: &str,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let (cert_kind, cn) = match kind {
        TerminalKind::Terminal => {
            let Some(physician_name) = registered_physician(cfg, physician).await? else {
                return Ok(ExitCode::FAILURE);
            };
            (ClientKind::Terminal, physician_name)
        }
        TerminalKind::SiteSystem => (ClientKind::SiteSystem, format!("{name} (site system)")),
    };
    let ca = Ca::load(&cfg.ca.cert, &cfg.ca.key)?;
    let issued = ca.issue_client(cert_kind, &cn, name, out, cfg.ca.terminal_days)?;
    let terminal = Terminal {
        name: name.to_string(),
        physician: physician.to_string(),
        fingerprint: issued.info.fingerprint.clone(),
        serial: issued.info.serial.clone(),
        not_after: issued.info.not_after.to_offset(clock::JST),
        revoked: false,
        registered: clock::rfc3339(SystemClock.now()),
        kind,
        tunnel_ip: None,
    };
    let r = admin_call(cfg, AdminRequest::TerminalRegister { terminal }).await?;
    if !r.ok {
        // Not registered: the files must not be mistaken for a working credential.
        for p in [&issued.cert_path, &issued.key_path, &issued.p12_path] {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("seibo-gate: {}", r.message);
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", r.message);
    println!("certificate: {}", issued.cert_path.display());
    println!("private key: {}", issued.key_path.display());
    println!("PKCS#12:     {}", issued.p12_path.display());
    println!("PKCS#12 password (shown once): {}", issued.p12_password);
    println!("fingerprint: {}", issued.info.fingerprint);
    Ok(ExitCode::SUCCESS)
}

/// `terminal add --wireguard`: a key pair, a tunnel address from the pool, and a wg-quick
/// configuration that the official WireGuard clients import as is (art 12.2).
async fn terminal_add_wireguard(
    cfg: &Config,
    physician: &str,
    name: &str,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    use seibo_gate::wireguard;
    let wg = cfg.wireguard.as_ref().ok_or_else(|| {
        ConfigProblem("the WireGuard ingress is not enabled: add a [wireguard] section (seibo-gate init --wireguard ADDR:PORT writes one)".into())
    })?;
    if !seibo_gate::ids::TerminalName::is_valid(name) {
        return Err(UsageError(format!(
            "terminal name {name:?}: use letters, digits, '.', '_' or '-' (it names the .conf file)"
        ))
        .into());
    }
    if registered_physician(cfg, physician).await?.is_none() {
        return Ok(ExitCode::FAILURE);
    }
    let r = admin_call(cfg, AdminRequest::TerminalList {}).await?;
    let terminals: Vec<Terminal> = r.reply().unwrap_or_default();
    let used: std::collections::HashSet<std::net::Ipv4Addr> =
        terminals.iter().filter_map(|t| t.tunnel_ip).collect();
    let ip = wg
        .pool
        .iter()
        .filter(|ip| *ip != wg.pool.network() && *ip != wg.pool.broadcast() && *ip != wg.address)
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| {
            ConfigProblem(format!(
                "wireguard.pool {} has no free address left",
                wg.pool
            ))
        })?;
    let gateway_key = std::fs::read_to_string(&wg.private_key)
        .with_context(|| format!("reading {}", wg.private_key.display()))?;
    let gateway_public = wireguard::public_key_of(&wireguard::key_from_base64(gateway_key.trim())?);
    let (private, public) = wireguard::generate_keypair();
    let now = SystemClock.now();
    let conf = format!(
        "# Seibo Net terminal {name} of physician {physician}, issued {issued} by site {site}.\n\
         # Import into the WireGuard client; then open https://{gw}/ in the browser.\n\
         [Interface]\n\
         PrivateKey = {private}\n\
         Address = {ip}/32\n\
         \n\
         [Peer]\n\
         PublicKey = {public_gw}\n\
         Endpoint = {endpoint}\n\
         AllowedIPs = {gw}/32\n\
         PersistentKeepalive = {keepalive}\n",
        issued = clock::rfc3339(now),
        site = cfg.site.id,
        gw = wg.address,
        private = wireguard::key_to_base64(&private),
        public_gw = wireguard::key_to_base64(&gateway_public),
        endpoint = wg.endpoint,
        keepalive = wg.keepalive_secs,
    );
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("creating {}", out.display()))?;
    }
    let conf_path = out.join(format!("{name}.conf"));
    seibo_gate::pki::write_new_file(&conf_path, conf.as_bytes(), 0o600)?;
    let days = i64::from(cfg.ca.terminal_days);
    let terminal = Terminal {
        name: name.to_string(),
        physician: physician.to_string(),
        fingerprint: seibo_gate::model::wireguard_fingerprint(&wireguard::key_to_base64(&public)),
        serial: String::new(),
        not_after: (now + time::Duration::days(days)).to_offset(clock::JST),
        revoked: false,
        registered: clock::rfc3339(now),
        kind: TerminalKind::Terminal,
        tunnel_ip: Some(ip),
    };
    let r = admin_call(cfg, AdminRequest::TerminalRegister { terminal }).await?;
    if !r.ok {
        let _ = std::fs::remove_file(&conf_path);
        eprintln!("seibo-gate: {}", r.message);
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", r.message);
    println!("WireGuard configuration: {}", conf_path.display());
    println!(
        "tunnel address: {ip}; the physician opens https://{}/",
        wg.address
    );
    println!("public key: {}", wireguard::key_to_base64(&public));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand and every argument, hidden ones included, explains itself in `--help`.
    #[test]
    fn every_subcommand_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, blank: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    blank.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help"
                    && sub
                        .get_about()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    blank.push(p.clone());
                }
                walk(sub, &p, blank);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut blank = Vec::new();
        walk(&cmd, "seibo-gate", &mut blank);
        assert!(blank.is_empty(), "without help text: {blank:#?}");
        assert!(
            cmd.get_after_help()
                .is_some_and(|h| h.to_string().contains("78  config")),
            "the exit statuses follow --help"
        );
    }
}
