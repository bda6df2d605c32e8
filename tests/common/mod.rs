//! Shared harness for the integration tests: the real `seibo-gate` binary serving a site made
//! by `seibo-gate init` in a fresh temporary directory, a real HTTP upstream playing the EMR
//! (the binary's own `sample-emr`, or a recording server inside the test), the admin CLI, a
//! rustls client (ring only) that keeps one keep-alive connection, and `curl`.
//!
//! Every wait is bounded in time; all traffic goes to 127.0.0.1.

#![allow(dead_code)] // each test crate uses a different part of the harness

use std::io::Read;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub mod etcd;
pub mod haproxy;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_seibo-gate");

/// Longest wait for a process to come up or go down.
pub const START_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for one HTTP exchange.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(20);

/// A loopback TCP port that is free now (bound once to check, then released).
///
/// Taken below the kernel's ephemeral range (32768–60999 by default): a port the kernel hands
/// out for `:0` can be given to some client's outgoing connection before the process under test
/// binds it, which failed a CI run with "Address already in use". Ports are spread from a
/// per-process offset and never repeated within a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 7919 is prime to SPAN: successive picks walk the whole range.
        let port = LOW + (offset + n.wrapping_mul(7919)) % SPAN;
        let port = u16::try_from(port).expect("port below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free TCP port on 127.0.0.1 between {LOW} and {}",
        LOW + SPAN
    );
}

/// True once `127.0.0.1:port` accepts a TCP connection (bounded by `limit`).
pub fn wait_for_tcp(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while start.elapsed() < limit {
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Today's calendar date in Japan (UTC+9), as the gateway counts days.
pub fn today_jst() -> time::Date {
    let jst = time::UtcOffset::from_hms(9, 0, 0).expect("+09:00");
    time::OffsetDateTime::now_utc().to_offset(jst).date()
}

/// `YYYY-MM-DD`.
pub fn ymd(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Sends SIGTERM to a process (the gateway stops gracefully on it).
fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits (bounded) for a child to exit; kills it with SIGKILL when the time is up.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

// ---------------------------------------------------------------------------------------------
// The EMR

/// The binary's sample EMR (`seibo-gate sample-emr`) as a child process.
pub struct SampleEmr {
    pub port: u16,
    child: Option<Child>,
}

impl SampleEmr {
    pub fn start() -> SampleEmr {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["sample-emr", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sample-emr");
        let mut emr = SampleEmr {
            port,
            child: Some(child),
        };
        assert!(
            wait_for_tcp(port, START_LIMIT),
            "sample EMR did not listen on 127.0.0.1:{port} within {START_LIMIT:?}"
        );
        if let Some(c) = emr.child.as_mut() {
            assert!(
                matches!(c.try_wait(), Ok(None)),
                "sample EMR exited at start"
            );
        }
        emr
    }

    /// Stops the EMR (SIGKILL) and waits until its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SampleEmr {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the recording EMR received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target exactly as it arrived (origin-form).
    pub target: String,
    /// Lower-case names, in arrival order (repeated headers appear repeatedly).
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header (panics when it is absent or repeated).
    pub fn one(&self, name: &str) -> &str {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "header {name} in {:?}", self.headers);
        v[0]
    }
}

/// An in-test upstream that records exactly what the gateway sent it and answers 200 with
/// `recording EMR saw <target>`. Runs on its own thread and runtime.
pub struct RecordingEmr {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingEmr {
    pub fn start() -> RecordingEmr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind EMR");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("EMR runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stop_rx => return,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let seen = seen2.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let seen = seen.clone();
                                async move {
                                    let target = req
                                        .uri()
                                        .path_and_query()
                                        .map(|p| p.as_str().to_string())
                                        .unwrap_or_default();
                                    let headers = req
                                        .headers()
                                        .iter()
                                        .map(|(k, v)| {
                                            (
                                                k.as_str().to_string(),
                                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                            )
                                        })
                                        .collect();
                                    let body = format!("recording EMR saw {target}\n");
                                    if let Ok(mut s) = seen.lock() {
                                        s.push(Seen {
                                            method: req.method().to_string(),
                                            target,
                                            headers,
                                        });
                                    }
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(Bytes::from(body)),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        RecordingEmr {
            port,
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

impl Drop for RecordingEmr {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway

/// A terminal's credential files, as written by `terminal add`.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A site made by `seibo-gate init` in a temporary directory, optionally serving.
pub struct Gate {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    /// The mutual-TLS listener binds port 0 ([`Gate::listen_on_port_0`]).
    port_0: bool,
    child: Option<Child>,
    starts: u32,
    /// The site's own etcd cluster when the suite runs on the regional registry
    /// (`SEIBO_TEST_REGISTRY=etcd`, see [`Gate::init_site`]); stopped after the gateway.
    etcd: Option<etcd::EtcdCluster>,
}

/// `SEIBO_TEST_REGISTRY=etcd`: every site made by [`Gate::init_site`] keeps its registry in a
/// real etcd (one member, TLS, client certificates) instead of sled, so a suite proves the
/// same behaviour on both backends (`scripts/test` runs the gateway and sign-in suites so).
pub fn registry_under_test() -> &'static str {
    match std::env::var("SEIBO_TEST_REGISTRY").as_deref() {
        Ok("etcd") => "etcd",
        Ok("sled") | Err(_) => "sled",
        Ok(other) => panic!("SEIBO_TEST_REGISTRY={other:?}: not sled or etcd"),
    }
}

impl Gate {
    /// `seibo-gate init` for site `test-site` with the EMR at `127.0.0.1:emr_port`.
    pub fn init(emr_port: u16) -> Gate {
        Gate::init_site("test-site", emr_port)
    }

    pub fn init_site(site: &str, emr_port: u16) -> Gate {
        Gate::init_with(site, emr_port, &[])
    }

    /// [`Gate::init_site`] with more `init` arguments (e.g. `--wireguard ADDR:PORT`).
    pub fn init_with(site: &str, emr_port: u16, extra: &[&str]) -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("seibo-gate-it-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let out = Command::new(BIN)
            .arg("init")
            .arg("--dir")
            .arg(dir.path())
            .args(["--site", site])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("http://127.0.0.1:{emr_port}")])
            .args(["--private", "127.0.0.0/8"])
            .args(extra)
            .output()
            .expect("run init");
        assert!(out.status.success(), "init failed: {}", show(&out));
        let config = dir.path().join("gate.toml");
        // `init` always writes the metrics endpoint on 127.0.0.1:9464; tests run in parallel,
        // so each site gets a port of its own.
        let text = std::fs::read_to_string(&config).expect("read gate.toml");
        let text = text.replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
        );
        std::fs::write(&config, text).expect("write gate.toml");
        let etcd = (registry_under_test() == "etcd").then(|| {
            let cluster = etcd::EtcdCluster::start(1);
            cluster.configure_gateway(&config, "/seibo-net-suite/", 15);
            cluster
        });
        Gate {
            dir,
            config,
            port,
            port_0: false,
            child: None,
            starts: 0,
            etcd,
        }
    }

    /// A site whose directory `dir` (holding `gate.toml`) the test made itself, e.g. with
    /// `network init` or `init --join`; its mutual-TLS listener on 127.0.0.1:`port`.
    pub fn from_site_dir(dir: tempfile::TempDir, port: u16) -> Gate {
        let config = dir.path().join("gate.toml");
        assert!(config.exists(), "{} has no gate.toml", dir.path().display());
        Gate {
            dir,
            config,
            port,
            port_0: false,
            child: None,
            starts: 0,
            etcd: None,
        }
    }

    /// Test-bench mode (`[auth] password = "off"`): the terminal credential alone lets a
    /// physician through, without the sign-in (art 13.1 second factor). For tests that prove
    /// the other rules and speak to the EMR directly; call before `start`.
    pub fn terminal_credential_only(&self) {
        let text = std::fs::read_to_string(&self.config).expect("read gate.toml");
        assert!(
            text.contains("password = \"required\""),
            "gate.toml written by init has no [auth] password = \"required\""
        );
        std::fs::write(
            &self.config,
            text.replacen("password = \"required\"", "password = \"off\"", 1),
        )
        .expect("write gate.toml");
        let out = self.cli(&["check-config"]);
        assert!(out.status.success(), "bench config: {}", show(&out));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca/terminal-ca.crt")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.path("state/admin.sock")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.path("state/audit")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.path(&format!("serve-{n}.log"))
    }

    /// The gateway's log of its latest run (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// Spawns `seibo-gate serve` without waiting.
    pub fn spawn(&mut self) -> &mut Child {
        let mut c = Command::new(BIN);
        c.arg("serve").arg("--config").arg(&self.config);
        self.spawn_command(c)
    }

    /// Spawns `command` (which must end up exec'ing `seibo-gate serve` for this site, e.g.
    /// under `unshare`) as the gateway, its output in the serve log.
    pub fn spawn_command(&mut self, mut command: Command) -> &mut Child {
        assert!(self.child.is_none(), "gateway already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = command
            .env("SEIBO_GATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn serve");
        self.child.insert(child)
    }

    /// `seibo-gate serve`, waiting (bounded) until the TLS port and the admin socket answer.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// [`Gate::spawn_command`], then waits like [`Gate::start`].
    pub fn start_command(&mut self, command: Command) {
        self.spawn_command(command);
        self.wait_ready();
    }

    /// Lets the kernel choose the mutual-TLS listener's port (`listen = "127.0.0.1:0"`)
    /// instead of [`free_port`]'s guess: `port` is 0 until a start reads the bound port from
    /// the gateway's "seibo-gate ready" log line, and each start binds (and reads) a new one.
    /// Call before `start`.
    pub fn listen_on_port_0(&mut self) {
        let text = std::fs::read_to_string(&self.config).expect("read gate.toml");
        let old = format!("listen = \"127.0.0.1:{}\"", self.port);
        assert!(text.contains(&old), "gate.toml has no {old}");
        std::fs::write(
            &self.config,
            text.replacen(&old, "listen = \"127.0.0.1:0\"", 1),
        )
        .expect("write gate.toml");
        self.port = 0;
        self.port_0 = true;
    }

    /// The mutual-TLS listeners' addresses as the running gateway reports them in its log
    /// ("seibo-gate ready", field `listeners`); empty until it is ready.
    pub fn bound_listeners(&self) -> Vec<std::net::SocketAddr> {
        let log = self.log();
        let Some(fields) = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["fields"].clone())
            .find(|f| f["message"] == "seibo-gate ready")
        else {
            return Vec::new();
        };
        fields["listeners"]
            .as_str()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .split(", ")
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        let port_0 = self.port_0;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    panic!("serve exited at start ({status}):\n{}", self.log());
                }
            }
            if port_0 {
                self.port = self.bound_listeners().first().map_or(0, |a| a.port());
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            let tcp = self.port != 0
                && StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            let admin = tcp && self.admin_answers();
            if tcp && admin {
                return;
            }
            assert!(
                start.elapsed() < START_LIMIT,
                "serve did not come up within {START_LIMIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when a gateway answers a read-only request on the admin socket.
    fn admin_answers(&self) -> bool {
        use std::io::Write;
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.admin_socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"{\"op\":\"physician-list\"}\n").is_err()
            || s.shutdown(std::net::Shutdown::Write).is_err()
        {
            return false;
        }
        let mut resp = String::new();
        s.read_to_string(&mut resp).is_ok() && resp.contains("\"ok\":true")
    }

    /// Waits (bounded) for a spawned `serve` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        wait_exit(&mut c, limit)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a bounded wait for the graceful stop; true when it stopped by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        sigterm(c.id());
        wait_exit(&mut c, START_LIMIT).is_some_and(|s| s.success())
    }

    /// The running gateway's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `seibo-gate ARGS --config D/gate.toml`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .expect("run seibo-gate")
    }

    /// Runs the CLI and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "seibo-gate {args:?} failed: {}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn add_physician(&self, id: &str) {
        self.ok(&[
            "physician",
            "add",
            "--id",
            id,
            "--name",
            &format!("Dr {id}"),
        ]);
    }

    /// `physician add --password-stdin`: registers a physician with a one-time password the
    /// administrator chose; the password is never echoed. Its stdout.
    pub fn add_physician_with_password(&self, id: &str, name: &str, password: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args([
                "physician",
                "add",
                "--id",
                id,
                "--name",
                name,
                "--password-stdin",
            ])
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn physician add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        let out = child.wait_with_output().expect("physician add");
        assert!(out.status.success(), "physician add: {}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !stdout.contains(password),
            "a password read from stdin is never echoed: {stdout}"
        );
        stdout
    }

    /// `terminal add` into D/terms; the files it wrote.
    pub fn add_terminal(&self, physician: &str, name: &str) -> Terminal {
        let out = self.path("terms");
        self.ok(&[
            "terminal",
            "add",
            "--physician",
            physician,
            "--name",
            name,
            "--out",
            out.to_str().expect("utf-8 path"),
        ]);
        let t = Terminal {
            name: name.to_string(),
            cert: out.join(format!("{name}.crt")),
            key: out.join(format!("{name}.key")),
        };
        assert!(t.cert.exists() && t.key.exists(), "terminal files {t:?}");
        t
    }

    /// Consent by the patient, published on `published`.
    pub fn grant(&self, patient: &str, published: time::Date) {
        self.ok(&[
            "consent",
            "grant",
            "--patient",
            patient,
            "--by",
            "patient",
            "--published",
            &ymd(published),
            "--form-ref",
            &format!("F6-{patient}"),
        ]);
    }

    pub fn withdraw(&self, patient: &str) {
        self.ok(&[
            "consent",
            "withdraw",
            "--patient",
            patient,
            "--form-ref",
            &format!("F7-{patient}"),
        ]);
    }

    /// `audit query --json`, one JSON value per line.
    pub fn audit_rows(&self) -> Vec<serde_json::Value> {
        self.ok(&["audit", "query", "--json"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("audit query line is JSON"))
            .collect()
    }

    /// Audit rows of client requests (not admin changes).
    pub fn request_rows(&self) -> Vec<serde_json::Value> {
        self.audit_rows()
            .into_iter()
            .filter(|r| r["ingress"] == "mtls")
            .collect()
    }

    /// Polls (bounded) until `n` client request rows all carry their outcome status.
    pub fn request_rows_settled(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let rows = self.request_rows();
            if rows.len() >= n && rows.iter().all(|r| r["status"].is_u64()) {
                return rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "audit rows did not settle: want {n} with status, have {rows:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A rustls client config presenting `t`.
    pub fn client(&self, t: &Terminal) -> Arc<ClientConfig> {
        client_config(&self.ca(), Some(t))
    }

    /// `curl` a path on this gateway with terminal `t` (`--path-as-is`: no client-side
    /// normalisation). Extra arguments go before the URL.
    pub fn curl(&self, t: Option<&Terminal>, path: &str, extra: &[&str]) -> CurlReply {
        curl(self.port, &self.ca(), t, path, extra)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- seibo-gate serve log ({}) ---\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// A process output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// curl

/// What curl got.
#[derive(Debug)]
pub struct CurlReply {
    /// curl's exit code.
    pub exit: i32,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

/// Asserts curl is installed (these tests never skip).
pub fn require_curl() {
    let v = Command::new("curl").arg("--version").output();
    assert!(
        v.is_ok_and(|o| o.status.success()),
        "curl must be installed to run the integration tests"
    );
}

pub fn curl(port: u16, ca: &Path, t: Option<&Terminal>, path: &str, extra: &[&str]) -> CurlReply {
    require_curl();
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--path-as-is", "--max-time", "20"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(ca);
    if let Some(t) = t {
        c.arg("--cert").arg(&t.cert).arg("--key").arg(&t.key);
    }
    c.args(extra).arg(format!("https://localhost:{port}{path}"));
    parse_curl(&c.output().expect("run curl"))
}

/// curl's `-i` output: status, lower-cased head, body.
pub fn parse_curl(out: &Output) -> CurlReply {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text.clone(), String::new()),
    };
    let status = head
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    CurlReply {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers: head.to_ascii_lowercase(),
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The rustls client

/// Client config (ring provider only) trusting `ca`, presenting `terminal` when given.
pub fn client_config(ca: &Path, terminal: Option<&Terminal>) -> Arc<ClientConfig> {
    client_config_with_roots(ca, terminal)
}

fn client_config_with_roots(ca: &Path, terminal: Option<&Terminal>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in seibo_gate::site::pki::load_certs(ca).expect("CA certificate") {
        roots.add(c).expect("add root");
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut cfg = match terminal {
        Some(t) => builder
            .with_client_auth_cert(
                seibo_gate::site::pki::load_certs(&t.cert).expect("terminal cert"),
                seibo_gate::site::pki::load_key(&t.key).expect("terminal key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// TCP + TLS to the gateway on 127.0.0.1, server name `localhost`.
pub async fn tls_connect(
    port: u16,
    cfg: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(REQUEST_LIMIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .context("TCP connect timed out")??;
    let name = ServerName::try_from("localhost").context("server name")?;
    let tls = tokio::time::timeout(REQUEST_LIMIT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    Ok(tls)
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 keep-alive connection over mutual TLS: every request on it uses the same
/// TCP connection (a request on a connection the server closed is an error, never a retry).
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: Option<tokio::task::JoinHandle<hyper::Result<()>>>,
    port: u16,
}

impl Conn {
    pub async fn open(port: u16, cfg: Arc<ClientConfig>) -> anyhow::Result<Conn> {
        let tls = tls_connect(port, cfg).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        let driver = tokio::spawn(conn);
        Ok(Conn {
            sender,
            driver: Some(driver),
            port,
        })
    }

    /// Why the connection ended (the TLS alert, for instance), once its driver has stopped.
    async fn ended(&mut self) -> String {
        let Some(d) = self.driver.take() else {
            return String::new();
        };
        match tokio::time::timeout(Duration::from_secs(2), d).await {
            Ok(Ok(Err(e))) => {
                let mut msg = format!(" (connection: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                msg.push(')');
                msg
            }
            _ => String::new(),
        }
    }

    pub async fn get(&mut self, target: &str) -> anyhow::Result<Reply> {
        self.get_with(target, &[]).await
    }

    /// GET `target` (sent as written) with extra request headers.
    pub async fn get_with(
        &mut self,
        target: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let ready = tokio::time::timeout(REQUEST_LIMIT, self.sender.ready())
            .await
            .context("connection not ready in time")?;
        if let Err(e) = ready {
            let why = self.ended().await;
            bail!("connection closed: {e}{why}");
        }
        let mut b = http::Request::get(target)
            .header(http::header::HOST, format!("localhost:{}", self.port));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::new()).context("build request")?;
        let resp = tokio::time::timeout(REQUEST_LIMIT, self.sender.send_request(req))
            .await
            .context("response timed out")?;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let why = self.ended().await;
                bail!("request failed: {e}{why}");
            }
        };
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(REQUEST_LIMIT, body.collect())
            .await
            .context("body timed out")?
            .context("body failed")?
            .to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

/// Opens a connection and sends one GET: the whole exchange, or why it failed.
pub async fn get_once(port: u16, cfg: Arc<ClientConfig>, target: &str) -> anyhow::Result<Reply> {
    let mut c = Conn::open(port, cfg).await?;
    c.get(target).await
}

/// How the server ends a TLS connection that sends nothing: the handshake (or, with TLS 1.3,
/// the first read after it, where the client certificate's verdict arrives) fails with the
/// server's alert. Returns that error text; `Err` when the server accepted the client (kept
/// the connection open for `wait`).
pub async fn refusal_at_handshake(
    port: u16,
    cfg: Arc<ClientConfig>,
    wait: Duration,
) -> anyhow::Result<String> {
    let mut tls = match tls_connect(port, cfg).await {
        Ok(t) => t,
        Err(e) => return Ok(format!("{e:#}")),
    };
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(wait, tls.read(&mut buf)).await {
        Err(_) => bail!("the server kept the connection open: the client was accepted"),
        Ok(Ok(0)) => bail!("the server closed the connection without an alert"),
        Ok(Ok(n)) => bail!("the server sent {n} bytes of application data"),
        Ok(Err(e)) => Ok(e.to_string()),
    }
}

/// Writes `request` raw over mutual TLS and reads until the server closes (send
/// `Connection: close`); returns the status and the whole response text.
pub async fn raw_request(
    port: u16,
    cfg: Arc<ClientConfig>,
    request: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut tls = tls_connect(port, cfg).await?;
    tls.write_all(request).await?;
    tls.flush().await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A peer closing without close_notify after the response is fine here.
                Err(e) if !buf.is_empty() => {
                    let _ = e;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("raw response timed out")?;
    read?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status line in {text:?}"))?;
    Ok((status, text))
}

/// Reads the whole of a file as bytes (helper for tamper tests).
pub fn read_bytes(p: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(p).expect("open");
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read");
    v
}

/// Fails unless `cond` holds within `limit` (polled every 50 ms).
pub fn eventually(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {limit:?}")
}

/// Bounds of a keep-alive load that ends with `kill -9` ([`load_then_kill9`]).
#[derive(Debug, Clone, Copy)]
pub struct KillLoad {
    /// Client connections, each its own task.
    pub clients: usize,
    /// The load stops after this long or this many requests, whichever is first.
    pub limit: Duration,
    pub max_requests: usize,
    /// The gateway is killed once this many requests were answered, or after `kill_after`.
    pub kill_at_answers: usize,
    pub kill_after: Duration,
}

/// What a [`load_then_kill9`] run did.
#[derive(Debug, Clone)]
pub struct KillLoadResult {
    /// Requests answered (by any status) before the kill.
    pub answered: usize,
    /// The path of every answered request (a response the client received in full).
    pub answered_paths: Vec<String>,
    /// Requests sent (at most `max_requests`).
    pub sent: usize,
    pub elapsed: Duration,
}

/// Runs keep-alive load from `load.clients` connections (client `i`'s `n`th request is
/// `GET path(i, n)`; `check` sees every answer and panics on a wrong one), SIGKILLs the
/// gateway in the middle of it, and waits (bounded) for every client to notice.
pub async fn load_then_kill9(
    gate: &mut Gate,
    cfg: Arc<ClientConfig>,
    load: KillLoad,
    path: fn(usize, usize) -> String,
    check: fn(&Reply),
) -> KillLoadResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let answered = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..load.clients {
        let (answered, sent, cfg) = (answered.clone(), sent.clone(), cfg.clone());
        let port = gate.port;
        tasks.push(tokio::spawn(async move {
            let mut paths = Vec::new();
            let Ok(mut conn) = Conn::open(port, cfg).await else {
                return paths;
            };
            let mut n = 0usize;
            while started.elapsed() < load.limit
                && sent.fetch_add(1, Ordering::SeqCst) < load.max_requests
            {
                n += 1;
                let p = path(i, n);
                match conn.get(&p).await {
                    Ok(r) => {
                        check(&r);
                        answered.fetch_add(1, Ordering::SeqCst);
                        paths.push(p);
                    }
                    // The gateway was killed: this connection is gone.
                    Err(_) => return paths,
                }
            }
            paths
        }));
    }
    while answered.load(Ordering::SeqCst) < load.kill_at_answers
        && started.elapsed() < load.kill_after
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.kill9();
    let mut answered_paths = Vec::new();
    for t in tasks {
        answered_paths.extend(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("client task ends after the kill")
                .expect("client task did not panic"),
        );
    }
    KillLoadResult {
        answered: answered.load(Ordering::SeqCst),
        answered_paths,
        sent: sent.load(Ordering::SeqCst).min(load.max_requests),
        elapsed: started.elapsed(),
    }
}

impl Gate {
    /// Writes every refused request to the audit one by one (no rate limit, no summary): for
    /// tests that count refusal rows and are not about the refusal audit's limit (issue 11
    /// item 8, whose own tests are in `flood.rs`).
    pub fn audit_every_refusal(&self) {
        let text = std::fs::read_to_string(&self.config).expect("read gate.toml");
        assert!(text.contains("[limits]\n"), "gate.toml has no [limits]");
        std::fs::write(
            &self.config,
            text.replacen(
                "[limits]\n",
                "[limits]\nrefusal_audit_rate = 10000\nrefusal_audit_burst = 100000\n",
                1,
            ),
        )
        .expect("write gate.toml");
    }
}

impl Gate {
    /// A second gateway of the same site (the same CA, server certificate, routes, EMR): the
    /// site directory copied without its state, on a listener and metrics port of its own.
    /// For two gateways that share one regional registry.
    pub fn twin(&self) -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("seibo-gate-twin-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.dir.path().display()))
            .arg(dir.path())
            .output()
            .expect("cp");
        assert!(out.status.success(), "cp: {}", show(&out));
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        for f in std::fs::read_dir(dir.path()).expect("twin dir").flatten() {
            if f.file_name().to_string_lossy().starts_with("serve-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let config = dir.path().join("gate.toml");
        let text = std::fs::read_to_string(&config).expect("read gate.toml");
        let port = free_port();
        let text = text.replacen(
            &format!("listen = \"127.0.0.1:{}\"", self.port),
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
        // The metrics endpoint: the line after `[metrics]`.
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if let Some(i) = lines.iter().position(|l| l.trim() == "[metrics]") {
            if let Some(l) = lines
                .iter_mut()
                .skip(i + 1)
                .find(|l| l.trim_start().starts_with("listen"))
            {
                *l = format!("listen = \"127.0.0.1:{}\"", free_port());
            }
        }
        std::fs::write(&config, lines.join("\n") + "\n").expect("write gate.toml");
        Gate {
            dir,
            config,
            port,
            port_0: false,
            child: None,
            starts: 0,
            etcd: None,
        }
    }

    /// Appends a `[registry]` section (e.g. [`etcd::EtcdCluster::registry_toml`]).
    pub fn append_config(&self, text: &str) {
        let mut t = std::fs::read_to_string(&self.config).expect("read gate.toml");
        t.push('\n');
        t.push_str(text);
        t.push('\n');
        std::fs::write(&self.config, t).expect("write gate.toml");
    }
}
