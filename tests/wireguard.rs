//! Issue 3 acceptance tests: the WireGuard ingress (art 12.2) against a real, independent
//! WireGuard implementation. The real `seibo-gate serve` and the sample EMR run in a server
//! network namespace; Debian's `wireguard-go` + `wg` play the physician's terminal in a client
//! namespace, configured with the `.conf` that `seibo-gate terminal add --wireguard` wrote;
//! curl is the browser. The namespaces are joined by veth pairs; nothing leaves them.
//!
//! Needs root, `ip` (iproute2), `wireguard-go`, `wg` (wireguard-tools) and `curl`
//! (`scripts/install-test-tools` installs them). Fails — never skips — when any is missing or
//! the namespaces cannot be made.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{show, today_jst, ymd, BIN};

/// The gateway's WireGuard endpoint: its address on the server namespace's veth.
const SERVER_VETH: &str = "10.231.0.1";
const CLIENT_VETH: &str = "10.231.0.2";
/// The unregistered terminal reaches the server namespace over a veth pair of its own.
const STRANGER_SERVER_VETH: &str = "10.231.1.1";
const STRANGER_VETH: &str = "10.231.1.2";
const WG_PORT: u16 = 51820;
/// Inside the server namespace (fresh, so fixed ports are free).
const EMR_PORT: u16 = 8080;
const MTLS_PORT: u16 = 8443;
const METRICS_PORT: u16 = 9464;
/// The gateway's address inside the tunnel (`init --wireguard` writes it).
const TUNNEL_GATEWAY: &str = "10.77.0.1";
/// What every consent refusal page says.
const CONSENT_JA: &str = "閲覧できません";
/// Longest wait for anything to come up.
const UP_LIMIT: Duration = Duration::from_secs(20);

/// Runs a command to completion; panics with its stderr when it fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tools this test runs; fails (never skips) without them.
fn require_tools() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "the WireGuard test creates network namespaces: run it as root"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: run scripts/install-test-tools (Debian package {package})"
        );
    }
}

/// A short id unique to this run (network interface names are at most 15 bytes).
fn run_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:07x}",
        (std::process::id() ^ nanos.rotate_left(11) ^ n.wrapping_mul(0x9e37_79b9)) & 0x0fff_ffff
    )
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What curl got inside a namespace.
#[derive(Debug)]
struct Got {
    exit: i32,
    status: Option<u16>,
    /// Lower-cased response head.
    headers: String,
    body: String,
    stderr: String,
    elapsed: Duration,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::trim)
    }
}

fn parse_curl(out: &Output, elapsed: Duration) -> Got {
    let r = common::parse_curl(out);
    Got {
        exit: r.exit,
        status: r.status,
        headers: r.headers,
        body: r.body,
        stderr: r.stderr,
        elapsed,
    }
}

/// Network namespaces, veth pairs and the processes in them, for one test; all removed on
/// drop, also when the test fails.
struct Lab {
    id: String,
    dir: tempfile::TempDir,
    server: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    /// wireguard-go's control sockets (on the shared filesystem, named after the interface).
    wg_sockets: Vec<PathBuf>,
    serve_log: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The gateway and wireguard-go stop on SIGTERM (wireguard-go removes its socket).
        for (_, child) in self.children.iter_mut().rev() {
            terminate(child);
        }
        for ns in &self.namespaces {
            // Anything still running in our namespace (by PID), then the namespace.
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill")
                    .args(["-KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for s in &self.wg_sockets {
            let _ = std::fs::remove_file(s);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- seibo-gate serve log (lab {}) ---\n{}",
                self.id,
                std::fs::read_to_string(&self.serve_log).unwrap_or_default()
            );
        }
    }
}

impl Lab {
    /// The server namespace (loopback up, veth `SERVER_VETH`) and the client namespace (veth
    /// `CLIENT_VETH`).
    fn new() -> Lab {
        require_tools();
        let id = run_id();
        let dir = tempfile::Builder::new()
            .prefix("seibo-gate-wg-")
            .tempdir()
            .expect("tempdir");
        let serve_log = dir.path().join("serve.log");
        let mut lab = Lab {
            server: format!("seibo-wg-{id}-gate"),
            id,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            wg_sockets: Vec::new(),
            serve_log,
        };
        let server = lab.server.clone();
        lab.add_namespace(&server);
        run("ip", &["-n", &server, "link", "set", "lo", "up"]);
        lab.peer_namespace("client", "c", SERVER_VETH, CLIENT_VETH);
        lab
    }

    fn add_namespace(&mut self, ns: &str) {
        run("ip", &["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
    }

    fn ns(&self, role: &str) -> String {
        format!("seibo-wg-{}-{role}", self.id)
    }

    /// A namespace joined to the server namespace by a veth pair (`server_ip`/24 on the server
    /// side, `ip`/24 on its own), with a route to the gateway's WireGuard endpoint.
    fn peer_namespace(&mut self, role: &str, tag: &str, server_ip: &str, ip: &str) -> String {
        let ns = self.ns(role);
        self.add_namespace(&ns);
        // Made inside the namespaces, so the names cannot clash with other runs.
        let (server_end, own_end) = (format!("v{tag}s"), format!("v{tag}"));
        run(
            "ip",
            &[
                "-n",
                &self.server,
                "link",
                "add",
                &server_end,
                "type",
                "veth",
                "peer",
                "name",
                &own_end,
                "netns",
                &ns,
            ],
        );
        let server_cidr = format!("{server_ip}/24");
        let own_cidr = format!("{ip}/24");
        run(
            "ip",
            &[
                "-n",
                &self.server,
                "addr",
                "add",
                &server_cidr,
                "dev",
                &server_end,
            ],
        );
        run(
            "ip",
            &["-n", &self.server, "link", "set", &server_end, "up"],
        );
        run(
            "ip",
            &["-n", &ns, "addr", "add", &own_cidr, "dev", &own_end],
        );
        run("ip", &["-n", &ns, "link", "set", &own_end, "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        if server_ip != SERVER_VETH {
            let gw = format!("{SERVER_VETH}/32");
            run("ip", &["-n", &ns, "route", "add", &gw, "via", server_ip]);
        }
        ns
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn in_ns(&self, ns: &str, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, cmd]).stdin(Stdio::null());
        c
    }

    fn spawn(&mut self, what: &str, mut cmd: Command, log: &Path) {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        self.children.push((what.to_string(), child));
    }

    /// Panics when a process of the lab has exited.
    fn assert_running(&mut self, what: &str) {
        let log = self.serve_log.clone();
        for (name, child) in &mut self.children {
            if name == what {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{what} exited ({status}); serve log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Polls `cmd` (a fresh one each time) until it succeeds, within `UP_LIMIT`.
    fn wait_until(&mut self, what: &str, process: &str, mut cmd: impl FnMut(&Lab) -> Command) {
        let start = Instant::now();
        loop {
            let ok = cmd(self)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            self.assert_running(process);
            assert!(
                start.elapsed() < UP_LIMIT,
                "{what}: not within {UP_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl -i` over HTTPS to the gateway's tunnel address from namespace `ns`, trusting the
    /// site CA.
    fn tunnel_curl(&self, ns: &str, site: &Site, path: &str, max_secs: u32, extra: &[&str]) -> Got {
        let mut c = self.in_ns(ns, "curl");
        c.args(["-sS", "-i", "--max-time", &max_secs.to_string()])
            .arg("--cacert")
            .arg(site.ca())
            .args(extra)
            .arg(format!("https://{TUNNEL_GATEWAY}{path}"));
        let start = Instant::now();
        let out = c.output().expect("run curl");
        parse_curl(&out, start.elapsed())
    }

    /// The gateway's metrics, scraped inside the server namespace.
    fn metrics(&self) -> String {
        let out = self
            .in_ns(&self.server, "curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "metrics scrape: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One sample's value (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The sample EMR and `seibo-gate serve` in the server namespace, both answering.
    fn start_gateway(&mut self, site: &Site) {
        let mut emr = self.in_ns(&self.server, BIN);
        emr.args(["sample-emr", "--listen", &format!("127.0.0.1:{EMR_PORT}")]);
        let emr_log = self.path("emr.log");
        self.spawn("sample-emr", emr, &emr_log);
        let server = self.server.clone();
        self.wait_until("the sample EMR answers", "sample-emr", |lab| {
            let mut c = lab.in_ns(&server, "curl");
            c.args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{EMR_PORT}/"),
            ]);
            c
        });

        let mut serve = self.in_ns(&self.server, BIN);
        serve
            .arg("serve")
            .arg("--config")
            .arg(&site.config)
            .env("SEIBO_GATE_LOG", "info");
        let log = self.serve_log.clone();
        self.spawn("serve", serve, &log);
        self.wait_until("the gateway's metrics endpoint answers", "serve", |lab| {
            let mut c = lab.in_ns(&server, "curl");
            c.args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{METRICS_PORT}/healthz"),
            ]);
            c
        });
        // The admin socket is a file: the CLI reaches it from outside the namespace.
        let config = site.config.clone();
        self.wait_until("the admin socket answers", "serve", |_| {
            let mut c = Command::new(BIN);
            c.args(["physician", "list", "--config"]).arg(&config);
            c
        });
        let listening = run("ip", &["netns", "exec", &server, "ss", "-Hlun"]);
        assert!(
            listening.contains(&format!("{SERVER_VETH}:{WG_PORT}")),
            "no WireGuard UDP socket on {SERVER_VETH}:{WG_PORT}: {listening}"
        );
    }

    /// wireguard-go in namespace `ns` as interface `iface`, configured from a wg-quick `.conf`
    /// the way wg-quick does it: `wg setconf` takes the file as is but for `Address` (a
    /// wg-quick key), which becomes `ip addr add`; each `AllowedIPs` becomes a route.
    fn wireguard_go(&mut self, ns: &str, iface: &str, conf: &Path) {
        assert!(iface.len() <= 15, "interface name {iface} too long");
        let mut wg = self.in_ns(ns, "wireguard-go");
        wg.args(["-f", iface]);
        let log = self.path(&format!("{iface}.log"));
        self.spawn(iface, wg, &log);
        self.wg_sockets
            .push(PathBuf::from(format!("/var/run/wireguard/{iface}.sock")));
        let ns2 = ns.to_string();
        let iface2 = iface.to_string();
        self.wait_until("wireguard-go's interface exists", iface, |lab| {
            let mut c = lab.in_ns(&ns2, "wg");
            c.args(["show", &iface2]);
            c
        });

        let text = std::fs::read_to_string(conf).expect("read .conf");
        let value = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().to_string())
                })
                .flat_map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let addresses = value("Address");
        let allowed = value("AllowedIPs");
        assert!(
            !addresses.is_empty() && !allowed.is_empty(),
            "{conf:?} has no Address or AllowedIPs:\n{text}"
        );
        let setconf: String = text
            .lines()
            .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != "Address"))
            .map(|l| format!("{l}\n"))
            .collect();
        let setconf_path = self.path(&format!("{iface}.setconf"));
        std::fs::write(&setconf_path, setconf).expect("write setconf");
        let setconf_arg = setconf_path.to_string_lossy().into_owned();
        run(
            "ip",
            &["netns", "exec", ns, "wg", "setconf", iface, &setconf_arg],
        );
        for a in &addresses {
            run("ip", &["-n", ns, "addr", "add", a, "dev", iface]);
        }
        run("ip", &["-n", ns, "link", "set", iface, "mtu", "1420", "up"]);
        for a in &allowed {
            run("ip", &["-n", ns, "route", "add", a, "dev", iface]);
        }
    }
}

/// A site written by `seibo-gate init --wireguard`, for the gateway in the server namespace.
struct Site {
    config: PathBuf,
}

impl Site {
    fn init(lab: &Lab, password: &str) -> Site {
        let dir = lab.path("site");
        let out = Command::new(BIN)
            .arg("init")
            .arg("--dir")
            .arg(&dir)
            .args(["--site", "wg-site"])
            .args(["--listen", &format!("127.0.0.1:{MTLS_PORT}")])
            .args(["--upstream", &format!("http://127.0.0.1:{EMR_PORT}")])
            .args(["--private", "127.0.0.0/8"])
            .args(["--metrics", &format!("127.0.0.1:{METRICS_PORT}")])
            .args(["--wireguard", &format!("{SERVER_VETH}:{WG_PORT}")])
            .output()
            .expect("run init");
        assert!(out.status.success(), "init --wireguard: {}", show(&out));
        let config = dir.join("gate.toml");
        let text = std::fs::read_to_string(&config).expect("read gate.toml");
        assert!(text.contains("[wireguard]"), "{text}");
        assert!(text.contains("password = \"required\""), "{text}");
        std::fs::write(
            &config,
            text.replacen(
                "password = \"required\"",
                &format!("password = \"{password}\""),
                1,
            ),
        )
        .expect("write gate.toml");
        let site = Site { config };
        site.ok(&["check-config"]);
        site
    }

    fn ca(&self) -> PathBuf {
        self.config.with_file_name("ca").join("terminal-ca.crt")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .expect("run seibo-gate")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "seibo-gate {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers a physician; the initial password.
    fn add_physician(&self, id: &str) -> String {
        let out = self.ok(&[
            "physician",
            "add",
            "--id",
            id,
            "--name",
            &format!("Dr {id}"),
        ]);
        out.lines()
            .find(|l| l.starts_with("initial password"))
            .and_then(|l| l.rsplit(": ").next())
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("no initial password in {out}"))
    }

    /// `terminal add --wireguard`: the `.conf` it wrote.
    fn add_wireguard_terminal(&self, physician: &str, name: &str, out: &Path) -> PathBuf {
        let printed = self.ok(&[
            "terminal",
            "add",
            "--physician",
            physician,
            "--name",
            name,
            "--out",
            out.to_str().expect("utf-8 path"),
            "--wireguard",
        ]);
        let conf = out.join(format!("{name}.conf"));
        assert!(conf.exists(), "no {conf:?}: {printed}");
        conf
    }

    fn grant(&self, patient: &str) {
        self.ok(&[
            "consent",
            "grant",
            "--patient",
            patient,
            "--by",
            "patient",
            "--published",
            &ymd(today_jst()),
            "--form-ref",
            &format!("F6-{patient}"),
        ]);
    }

    /// The audit's rows of WireGuard requests, once `n` of them carry their outcome (bounded).
    fn wireguard_rows(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let rows: Vec<serde_json::Value> = self
                .ok(&["audit", "query", "--json"])
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
                .filter(|r: &serde_json::Value| r["ingress"] == "wireguard")
                .collect();
            if rows.len() >= n && rows.iter().all(|r| r["status"].is_u64()) {
                return rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "audit: want {n} settled wireguard rows, have {rows:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The value of `key` in a `.conf` file.
fn conf_value(conf: &str, key: &str) -> String {
    conf.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in\n{conf}"))
}

/// Art 12.2 (VPN tunnelling): a physician's terminal that runs a real, independent WireGuard
/// (wireguard-go + wg, configured with the `.conf` from `terminal add --wireguard` as it is)
/// reaches the EMR through the tunnel over HTTPS under the same policy as mutual TLS: 200 with
/// the EMR's page for a consented patient, 403 with the Japanese refusal page for a
/// non-consented one, both audited under ingress `wireguard` with the terminal's name. A key
/// the registry does not know gets nothing at all (no handshake answer: curl times out) and is
/// counted in `seibo_gate_wireguard_dropped_packets_total{cause="unknown-key"}`. `terminal
/// revoke` drops the tunnel at once: an open download is reset, and the next request gets
/// nothing.
#[test]
fn art_12_2_wireguard_go_terminal_reaches_the_emr_through_the_tunnel_under_the_same_policy() {
    let mut lab = Lab::new();
    let site = Site::init(&lab, "off");
    lab.start_gateway(&site);
    let client = lab.ns("client");

    site.add_physician("dr1");
    let conf = site.add_wireguard_terminal("dr1", "pc1", &lab.path("terms"));
    let conf_text = std::fs::read_to_string(&conf).expect("read .conf");
    assert_eq!(
        conf_value(&conf_text, "Endpoint"),
        format!("{SERVER_VETH}:{WG_PORT}")
    );
    assert_eq!(
        conf_value(&conf_text, "AllowedIPs"),
        format!("{TUNNEL_GATEWAY}/32")
    );
    let tunnel_ip = conf_value(&conf_text, "Address")
        .trim_end_matches("/32")
        .to_string();
    site.grant("P001");
    let iface = format!("sgc{}", lab.id);
    lab.wireguard_go(&client, &iface, &conf);

    // 1. A consented patient: the EMR's page, through the tunnel, with the terminal's identity.
    let got = lab.tunnel_curl(&client, &site, "/patients/P001/labs", 20, &[]);
    assert_eq!(
        got.status,
        Some(200),
        "consented patient through the tunnel: {got:#?}"
    );
    assert!(
        got.body
            .contains("patient <b>P001</b>, category <b>labs</b>"),
        "not the EMR's page: {}",
        got.body
    );
    for (header, value) in [
        ("x-seibo-terminal", "pc1"),
        ("x-seibo-physician", "dr1"),
        ("x-forwarded-for", tunnel_ip.as_str()),
    ] {
        assert!(
            got.body
                .contains(&format!("<th>{header}</th><td>{value}</td>")),
            "the EMR was not sent {header}: {value}: {}",
            got.body
        );
    }
    assert!(
        got.header("cache-control")
            .is_some_and(|c| c.contains("no-store")),
        "{}",
        got.headers
    );

    // 2. A patient without consent: the same refusal as on the mTLS path.
    let got = lab.tunnel_curl(&client, &site, "/patients/P002/labs", 20, &[]);
    assert_eq!(got.status, Some(403), "non-consented patient: {got:#?}");
    assert!(got.body.contains(CONSENT_JA), "{}", got.body);

    // 3. The audit names the ingress and the terminal.
    let rows = site.wireguard_rows(2);
    let row = |path: &str| {
        rows.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no audit row for {path}: {rows:#?}"))
            .clone()
    };
    let allowed = row("/patients/P001/labs");
    assert_eq!(
        (
            &allowed["terminal"],
            &allowed["physician"],
            &allowed["decision"],
            &allowed["status"]
        ),
        (
            &serde_json::json!("pc1"),
            &serde_json::json!("dr1"),
            &serde_json::json!("allow"),
            &serde_json::json!(200)
        ),
        "{allowed:#}"
    );
    assert!(
        allowed["client"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{tunnel_ip}:"))),
        "{allowed:#}"
    );
    let refused = row("/patients/P002/labs");
    assert_eq!(
        (
            &refused["terminal"],
            &refused["decision"],
            &refused["reason"],
            &refused["status"]
        ),
        (
            &serde_json::json!("pc1"),
            &serde_json::json!("deny"),
            &serde_json::json!("no-consent"),
            &serde_json::json!(403)
        ),
        "{refused:#}"
    );

    // 4. An unregistered key (fresh `wg genkey`, otherwise the same .conf) gets nothing at all.
    let stranger = lab.peer_namespace("stranger", "x", STRANGER_SERVER_VETH, STRANGER_VETH);
    let stranger_key = run("wg", &["genkey"]);
    let stranger_conf = lab.path("stranger.conf");
    let stranger_text: String = conf_text
        .lines()
        .map(|l| {
            if l.starts_with("PrivateKey") {
                format!("PrivateKey = {}\n", stranger_key.trim())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&stranger_conf, stranger_text).expect("write stranger.conf");
    let unknown_key = "seibo_gate_wireguard_dropped_packets_total{cause=\"unknown-key\"}";
    let dropped_before = lab.metric(unknown_key);
    lab.wireguard_go(&stranger, &format!("sgx{}", lab.id), &stranger_conf);
    let got = lab.tunnel_curl(&stranger, &site, "/patients/P001/labs", 4, &[]);
    assert_eq!(
        got.status, None,
        "an unregistered key was answered: {got:#?}"
    );
    assert_ne!(got.exit, 0, "{got:#?}");
    assert!(got.elapsed < Duration::from_secs(10), "{got:#?}");
    let start = Instant::now();
    while lab.metric(unknown_key) <= dropped_before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{unknown_key} did not rise above {dropped_before}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        site.wireguard_rows(2).len(),
        2,
        "an unregistered key left a request in the audit"
    );

    // 5. Revocation: an open download is reset at once ...
    let mut slow = lab.in_ns(&client, "curl");
    slow.args([
        "-sS",
        "-o",
        "/dev/null",
        "--limit-rate",
        "200k",
        "--max-time",
        "60",
    ])
    .arg("--cacert")
    .arg(site.ca())
    .arg(format!(
        "https://{TUNNEL_GATEWAY}/patients/P001/images/blob/104857600"
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut slow = slow.spawn().expect("slow download");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        matches!(slow.try_wait(), Ok(None)),
        "the slow download ended before the revocation"
    );
    let revoked_at = Instant::now();
    site.ok(&["terminal", "revoke", "--name", "pc1"]);
    let status = loop {
        if let Some(s) = slow.try_wait().expect("wait for curl") {
            break s;
        }
        if revoked_at.elapsed() > Duration::from_secs(5) {
            let _ = slow.kill();
            let _ = slow.wait();
            panic!("an open download through the tunnel survived the revocation by 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = slow.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(
        status.code(),
        Some(56),
        "expected curl's connection reset (56): {stderr}"
    );

    // ... and the next request gets nothing (the peer's tunnel is gone: no answer at all).
    let got = lab.tunnel_curl(&client, &site, "/patients/P001/labs", 3, &[]);
    assert_eq!(
        got.status, None,
        "a revoked terminal was answered: {got:#?}"
    );
    assert_ne!(
        got.exit, 0,
        "a revoked terminal was answered: {}",
        got.stderr
    );
    assert!(got.elapsed < Duration::from_secs(6), "{got:#?}");
    let start = Instant::now();
    while lab.metric("seibo_gate_wireguard_peers") != 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "seibo_gate_wireguard_peers stays above 0 after the revocation"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let rows = site.wireguard_rows(3);
    assert!(
        rows.iter()
            .filter(|r| r["path"] == "/patients/P001/labs")
            .count()
            == 1,
        "a request after the revocation reached the service: {rows:#?}"
    );
}

/// Art 12.2 with the second factor (art 6.3, 13.1): with `password = "required"`, sign-in
/// works inside the tunnel over HTTPS — the sign-in page, the one-time password and the forced
/// change, then the EMR page with the session cookie, which is `Secure` and so needs the
/// tunnel's HTTPS.
#[test]
fn art_12_2_sign_in_works_inside_the_tunnel() {
    let mut lab = Lab::new();
    let site = Site::init(&lab, "required");
    lab.start_gateway(&site);
    let client = lab.ns("client");
    let initial = site.add_physician("dr2");
    let conf = site.add_wireguard_terminal("dr2", "pc2", &lab.path("terms"));
    site.grant("P001");
    let iface = format!("sgc{}", lab.id);
    lab.wireguard_go(&client, &iface, &conf);
    let jar = lab.path("cookies.txt");
    let jar = jar.to_str().expect("utf-8 path");

    // Without a session, a browser is sent to sign in.
    let got = lab.tunnel_curl(
        &client,
        &site,
        "/patients/P001/labs",
        20,
        &["-H", "Accept: text/html"],
    );
    assert_eq!(got.status, Some(303), "{got:#?}");
    assert!(
        got.header("location")
            .is_some_and(|l| l.starts_with("/.seibo/login")),
        "{got:#?}"
    );
    let got = lab.tunnel_curl(&client, &site, "/.seibo/login", 20, &[]);
    assert_eq!(got.status, Some(200), "{got:#?}");
    assert!(
        got.body.contains("action=\"/.seibo/login\"") && got.body.contains("name=\"password\""),
        "not the sign-in page: {}",
        got.body
    );

    // The one-time password, then the forced change.
    let got = lab.tunnel_curl(
        &client,
        &site,
        "/.seibo/login",
        20,
        &[
            "-c",
            jar,
            "--data-urlencode",
            "id=dr2",
            "--data-urlencode",
            &format!("password={initial}"),
            "--data-urlencode",
            "next=/patients/P001/labs",
        ],
    );
    assert_eq!(got.status, Some(303), "sign-in: {got:#?}");
    assert_eq!(got.header("location"), Some("/.seibo/password"), "{got:#?}");
    let cookie = got.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("; secure"),
        "session cookie not Secure: {cookie}"
    );
    let got = lab.tunnel_curl(
        &client,
        &site,
        "/.seibo/password",
        20,
        &[
            "-b",
            jar,
            "-c",
            jar,
            "--data-urlencode",
            &format!("current={initial}"),
            "--data-urlencode",
            "new=tunnel-pass-0123",
        ],
    );
    assert_eq!(got.status, Some(303), "password change: {got:#?}");

    // Signed in: the EMR page, through the tunnel.
    let got = lab.tunnel_curl(&client, &site, "/patients/P001/labs", 20, &["-b", jar]);
    assert_eq!(got.status, Some(200), "signed in: {got:#?}");
    assert!(
        got.body
            .contains("patient <b>P001</b>, category <b>labs</b>"),
        "{}",
        got.body
    );
    let rows = site.wireguard_rows(5);
    assert!(rows.iter().all(|r| r["terminal"] == "pc2"), "{rows:#?}");
    assert!(
        rows.iter().any(|r| r["path"] == "/.seibo/login"
            && r["method"] == "POST"
            && r["physician"] == "dr2"),
        "{rows:#?}"
    );
}

/// `seibo-gate ARGS`, asserting success; stdout.
fn bin_ok(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run seibo-gate");
    assert!(out.status.success(), "seibo-gate {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `[registry]` as `network init` writes it (etcd) → sled, and the password factor off: the
/// test is about the tunnels (the regional registry and sign-in have their own tests).
fn bench_site(config: &Path) {
    let text = std::fs::read_to_string(config).expect("read gate.toml");
    let start = text.find("\n[registry]\n").expect("[registry]");
    let end_key = "max_stale_secs = 15\n";
    let end = start + text[start..].find(end_key).expect("max_stale_secs") + end_key.len();
    let text = format!(
        "{}\n[registry]\nbackend = \"sled\"\n{}",
        &text[..start],
        &text[end..]
    )
    .replacen("password = \"required\"", "password = \"off\"", 1);
    std::fs::write(config, text).expect("write gate.toml");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Issue 14, art 12.2: one WireGuard `.conf` issued at the hospital, with one `[Peer]` per
/// site gateway, reaches both gateways of the network — the hospital's at 10.77.0.1 and the
/// clinic's at its own tunnel address — through wireguard-go in a client namespace, each
/// gateway's in-tunnel certificate from the regional CA (inside its name constraints).
/// The clinic starts from a copy of the hospital's sled registry, standing in for the
/// regional registry.
#[test]
fn art_12_2_one_conf_with_two_peers_reaches_both_gateways_of_the_network() {
    let mut lab = Lab::new();
    let (home, bundle, clinic) = (lab.path("hospital"), lab.path("bundle"), lab.path("clinic"));
    let (h_emr, c_emr) = (EMR_PORT, EMR_PORT + 1);
    bin_ok(&[
        "network",
        "init",
        "--dir",
        home.to_str().unwrap(),
        "--site",
        "seiyo-hospital",
        "--host",
        SERVER_VETH,
        "--listen",
        &format!("127.0.0.1:{MTLS_PORT}"),
        "--peer-listen",
        "127.0.0.1:8843",
        "--upstream",
        &format!("http://127.0.0.1:{h_emr}"),
        "--private",
        "127.0.0.0/8",
        "--metrics",
        &format!("127.0.0.1:{METRICS_PORT}"),
        "--wireguard",
        &format!("{SERVER_VETH}:{WG_PORT}"),
        "--etcd",
        "https://127.0.0.1:2379",
    ]);
    let home_cfg = home.join("gate.toml");
    bin_ok(&[
        "site",
        "add",
        "--config",
        home_cfg.to_str().unwrap(),
        "--site",
        "nomura-clinic",
        "--host",
        SERVER_VETH,
        "--peer-listen",
        "127.0.0.1:8844",
        "--wireguard",
        &format!("{SERVER_VETH}:{}", WG_PORT + 1),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    bin_ok(&[
        "init",
        "--join",
        bundle.to_str().unwrap(),
        "--dir",
        clinic.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", MTLS_PORT + 1),
        "--upstream",
        &format!("http://127.0.0.1:{c_emr}"),
        "--private",
        "127.0.0.0/8",
        "--metrics",
        &format!("127.0.0.1:{}", METRICS_PORT + 1),
    ]);
    let clinic_cfg = clinic.join("gate.toml");
    bench_site(&home_cfg);
    bench_site(&clinic_cfg);
    let at_home =
        |args: &[&str]| bin_ok(&[args, &["--config", home_cfg.to_str().unwrap()]].concat());
    at_home(&["physician", "add", "--id", "dr-saiyo", "--name", "Dr Saiyo"]);
    let terms = lab.path("terms");
    at_home(&[
        "terminal",
        "add",
        "--physician",
        "dr-saiyo",
        "--name",
        "saiyo-wg",
        "--wireguard",
        "--out",
        terms.to_str().unwrap(),
    ]);
    let today = ymd(today_jst());
    at_home(&[
        "consent",
        "grant",
        "--patient",
        "P001",
        "--by",
        "patient",
        "--published",
        &today,
        "--form-ref",
        "F6-1",
    ]);
    copy_tree(&home.join("state/registry"), &clinic.join("state/registry"));
    bin_ok(&[
        "consent",
        "grant",
        "--patient",
        "P003",
        "--by",
        "patient",
        "--published",
        &today,
        "--form-ref",
        "F6-3",
        "--config",
        clinic_cfg.to_str().unwrap(),
    ]);
    let conf = terms.join("saiyo-wg.conf");
    let text = std::fs::read_to_string(&conf).expect("the .conf");
    assert_eq!(text.matches("[Peer]").count(), 2, "{text}");

    let server = lab.server.clone();
    for (what, port) in [("emr-hospital", h_emr), ("emr-clinic", c_emr)] {
        let mut emr = lab.in_ns(&server, BIN);
        emr.args(["sample-emr", "--listen", &format!("127.0.0.1:{port}")]);
        let log = lab.path(&format!("{what}.log"));
        lab.spawn(what, emr, &log);
    }
    for (what, cfg, metrics) in [
        ("serve", &home_cfg, METRICS_PORT),
        ("serve-clinic", &clinic_cfg, METRICS_PORT + 1),
    ] {
        let mut serve = lab.in_ns(&server, BIN);
        serve
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .env("SEIBO_GATE_LOG", "info");
        let log = if what == "serve" {
            lab.serve_log.clone()
        } else {
            lab.path("serve-clinic.log")
        };
        lab.spawn(what, serve, &log);
        // Readiness by its health endpoint (an admin command would open the store itself
        // while no gateway answers, and take sled's lock from the starting gateway).
        let server2 = server.clone();
        lab.wait_until("the gateway's health endpoint answers", what, |lab| {
            let mut c = lab.in_ns(&server2, "curl");
            c.args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{metrics}/healthz"),
            ]);
            c
        });
    }
    let client = lab.ns("client");
    lab.wireguard_go(&client, "wgnet", &conf);

    let ca = home.join("ca/terminal-ca.crt");
    let curl = |lab: &Lab, address: &str, path: &str| -> Got {
        let mut c = lab.in_ns(&client, "curl");
        c.args(["-sS", "-i", "--max-time", "10"])
            .arg("--cacert")
            .arg(&ca)
            .arg(format!("https://{address}{path}"));
        let start = Instant::now();
        let out = c.output().expect("run curl");
        parse_curl(&out, start.elapsed())
    };
    // The first packets wait for the handshake: poll (bounded).
    let start = Instant::now();
    let hospital = loop {
        let g = curl(&lab, TUNNEL_GATEWAY, "/patients/P001/labs");
        if g.status == Some(200) || start.elapsed() > UP_LIMIT {
            break g;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        hospital.status,
        Some(200),
        "the hospital through the tunnel: {hospital:?}"
    );
    assert!(
        hospital
            .body
            .contains("<th>x-seibo-site</th><td>seiyo-hospital</td>"),
        "{hospital:?}"
    );
    let start = Instant::now();
    let clinic_got = loop {
        let g = curl(&lab, "10.77.0.254", "/patients/P003/labs");
        if g.status == Some(200) || start.elapsed() > UP_LIMIT {
            break g;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        clinic_got.status,
        Some(200),
        "the clinic through the tunnel: {clinic_got:?}"
    );
    assert!(
        clinic_got
            .body
            .contains("<th>x-seibo-site</th><td>nomura-clinic</td>")
            && clinic_got
                .body
                .contains("<th>x-seibo-terminal</th><td>saiyo-wg</td>"),
        "{clinic_got:?}"
    );
    // Each site's policy still holds: no consent for P002 at the clinic.
    let refused = curl(&lab, "10.77.0.254", "/patients/P002/labs");
    assert_eq!(refused.status, Some(403), "{refused:?}");
}
