//! A real etcd v3 cluster for the regional-registry tests (issue 13): `n` members of Debian's
//! `etcd` on 127.0.0.1, TLS everywhere, with certificates made at test time.
//!
//! - One CA (rcgen, ECDSA P-256) per cluster, in the cluster's temporary directory.
//! - Each member has one certificate (SAN IP 127.0.0.1 and DNS `localhost`, server and client
//!   authentication) for its client port and for peer TLS; peers require each other's
//!   certificates (`--peer-client-cert-auth`) and clients must present one of the CA's
//!   certificates (`--client-cert-auth`).
//! - Client certificates: `gateway.crt`/`gateway.key` (for the gateways under test, see
//!   [`EtcdCluster::write_credentials`]) and `etcdctl.crt`/`etcdctl.key` (for
//!   [`EtcdCluster::etcdctl`]).
//! - Each member has its own data directory, client and peer ports ([`free_port`]) and log file;
//!   the cluster has its own `--initial-cluster-token`. Short heartbeat and election timeouts
//!   make elections quick; auto-compaction is off unless asked for.
//! - Members are stopped by PID; dropping the cluster SIGKILLs every member and removes the
//!   directory (members' log tails are printed first when the test is panicking).
//!
//! Every wait is bounded in time; a missing `etcd` or `etcdctl` binary fails the test.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{free_port, wait_for_tcp};

/// Longest wait for a new cluster to become healthy.
pub const ETCD_START_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for a stopped member to exit after SIGTERM (then SIGKILL).
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How much of each member's log [`EtcdCluster::logs`] shows.
const LOG_TAIL: usize = 6_000;

/// Tunables of a test cluster; [`EtcdOptions::default`] is what [`EtcdCluster::start`] uses.
#[derive(Debug, Clone, Copy)]
pub struct EtcdOptions {
    /// `--heartbeat-interval` in milliseconds.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in milliseconds.
    pub election_ms: u64,
    /// `--auto-compaction-retention` in revisions (`--auto-compaction-mode revision`); `None`
    /// leaves auto-compaction off.
    pub auto_compaction_revisions: Option<u64>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            heartbeat_ms: 50,
            election_ms: 500,
            auto_compaction_revisions: None,
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running `n`-member etcd cluster with TLS on loopback (see the module documentation).
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    options: EtcdOptions,
    members: Vec<Member>,
    /// How long [`EtcdCluster::start`] took until every member was healthy.
    pub started_in: Duration,
}

/// Panics with the installer's name when a tool is not on `PATH`.
fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: the regional-registry tests need a real etcd \
         (run scripts/install-test-tools, which installs Debian's etcd-server and etcd-client)"
    );
}

/// Writes a private key with mode 0600 from the start.
fn write_key(path: &Path, pem: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(pem.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Issues a certificate signed by `ca` with the given extended key usages and writes
/// `<dir>/<name>.crt` and `<dir>/<name>.key`.
fn issue(
    dir: &Path,
    ca: &Issuer<'_, KeyPair>,
    name: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
    server: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("generate key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    if server {
        p.subject_alt_names = vec![
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
            SanType::DnsName("localhost".try_into().expect("DNS name")),
        ];
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = usages;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(2);
    let cert = p.signed_by(&key, ca).expect("sign certificate");
    let crt = dir.join(format!("{name}.crt"));
    let kp = dir.join(format!("{name}.key"));
    fs::write(&crt, cert.pem()).expect("write certificate");
    write_key(&kp, &key.serialize_pem());
    (crt, kp)
}

/// Makes `<dir>/ca.crt` (and its key) and returns the issuer.
fn make_ca(dir: &Path, common_name: &str) -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("generate CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(2);
    let cert = p.self_signed(&key).expect("self-sign CA");
    fs::write(dir.join("ca.crt"), cert.pem()).expect("write ca.crt");
    write_key(&dir.join("ca.key"), &key.serialize_pem());
    Issuer::from_ca_cert_pem(&cert.pem(), key).expect("CA as issuer")
}

/// The last `max` bytes of a file (lossy UTF-8), or a note that it cannot be read.
fn tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let from = bytes.len().saturating_sub(max);
            let text = String::from_utf8_lossy(&bytes[from..]).into_owned();
            if from > 0 {
                format!("[... {from} bytes before ...]\n{text}")
            } else {
                text
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), sig);
}

/// Waits (bounded) for a child to exit; SIGKILLs it when the time is up.
fn reap(mut child: Child, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl EtcdCluster {
    /// Starts an `n`-member cluster (use 3) with [`EtcdOptions::default`] and waits until every
    /// member is healthy (at most [`ETCD_START_LIMIT`]); panics with the members' logs if not.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, EtcdOptions::default())
    }

    /// [`EtcdCluster::start`] with other timeouts or auto-compaction.
    pub fn start_with(n: usize, options: EtcdOptions) -> EtcdCluster {
        EtcdCluster::start_signed_by(n, options, None)
    }

    /// [`EtcdCluster::start`] with the caller's CA (certificate and key PEM files, e.g. the
    /// network's etcd CA that `seibo-gate network init` writes): the members' certificates and
    /// the harness's client certificates are signed by it, so that credentials the caller's CA
    /// issued (a site's `registry/gateway.crt`) are accepted.
    pub fn start_with_ca(n: usize, ca_cert: &Path, ca_key: &Path) -> EtcdCluster {
        EtcdCluster::start_signed_by(n, EtcdOptions::default(), Some((ca_cert, ca_key)))
    }

    fn start_signed_by(
        n: usize,
        options: EtcdOptions,
        given_ca: Option<(&Path, &Path)>,
    ) -> EtcdCluster {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        require_tool("etcd");
        require_tool("etcdctl");
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("seibo-etcd-")
            .tempdir()
            .expect("tempdir for etcd");
        let d = dir.path();

        let ca = match given_ca {
            Some((cert, key)) => {
                let pem = fs::read_to_string(cert).expect("read the given CA certificate");
                let key = fs::read_to_string(key).expect("read the given CA key");
                fs::write(d.join("ca.crt"), &pem).expect("write ca.crt");
                write_key(&d.join("ca.key"), &key);
                let key = KeyPair::from_pem(&key).expect("the given CA key");
                Issuer::from_ca_cert_pem(&pem, key).expect("the given CA as issuer")
            }
            None => make_ca(d, "seibo-gate test etcd CA"),
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        issue(d, &ca, "gateway", vec![ClientAuth], false);
        issue(d, &ca, "etcdctl", vec![ClientAuth], false);

        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let token = format!(
            "seibo-test-{}-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );

        let members = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let (cert, key) = issue(d, &ca, &name, vec![ServerAuth, ClientAuth], true);
                Member {
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir: d.join(format!("{name}.etcd")),
                    log: d.join(format!("{name}.log")),
                    name,
                    cert,
                    key,
                    child: None,
                }
            })
            .collect();

        let mut cluster = EtcdCluster {
            dir,
            token,
            options,
            members,
            started_in: Duration::ZERO,
        };
        for i in 0..n {
            cluster.spawn_member(i, "new");
        }
        if let Err(why) = cluster.wait_healthy(ETCD_START_LIMIT) {
            panic!(
                "the {n}-member etcd cluster did not become healthy: {why}\n{}",
                cluster.logs()
            );
        }
        cluster.started_in = began.elapsed();
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_member(&mut self, i: usize, state: &str) {
        let initial_cluster = self.initial_cluster();
        let ca = self.ca();
        let o = self.options;
        let token = self.token.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "etcd member {i} is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let log2 = log.try_clone().expect("etcd log file");
        let client = format!("https://127.0.0.1:{}", m.client_port);
        let peer = format!("https://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        // The members take their settings from these flags only (etcd also reads ETCD_*).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .arg("--cert-file")
            .arg(&m.cert)
            .arg("--key-file")
            .arg(&m.key)
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&ca)
            .arg("--peer-cert-file")
            .arg(&m.cert)
            .arg("--peer-key-file")
            .arg(&m.key)
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(&ca)
            .args(["--heartbeat-interval", &o.heartbeat_ms.to_string()])
            .args(["--election-timeout", &o.election_ms.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        match o.auto_compaction_revisions {
            Some(r) => cmd
                .args(["--auto-compaction-mode", "revision"])
                .args(["--auto-compaction-retention", &r.to_string()]),
            None => cmd.args(["--auto-compaction-retention", "0"]),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn etcd (run scripts/install-test-tools if it is missing): {e}")
            });
        m.child = Some(child);
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The cluster's temporary directory (certificates, data directories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:PORT` of every member (running or not), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `https://127.0.0.1:PORT` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// The CA certificate (PEM) that signed every member's and client's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The CA's private key (PEM), to issue more certificates in a test.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// The gateway's client certificate (PEM).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("gateway.crt")
    }

    /// The gateway's client key (PEM, 0600).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("gateway.key")
    }

    /// Copies the CA, the gateway's certificate and key into `<site_dir>/registry/` as
    /// `etcd-ca.crt`, `gateway.crt` and `gateway.key` (the key 0600): the relative paths that
    /// [`EtcdCluster::registry_toml`] names.
    pub fn write_credentials(&self, site_dir: &Path) {
        let reg = site_dir.join("registry");
        fs::create_dir_all(&reg).expect("create registry/");
        fs::copy(self.ca(), reg.join("etcd-ca.crt")).expect("copy etcd-ca.crt");
        fs::copy(self.client_cert(), reg.join("gateway.crt")).expect("copy gateway.crt");
        let key = fs::read_to_string(self.client_key()).expect("read gateway.key");
        write_key(&reg.join("gateway.key"), &key);
        fs::set_permissions(reg.join("gateway.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod gateway.key");
    }

    /// The `[registry]` section of `gate.toml` for this cluster, in issue 13's keys, with the
    /// paths [`EtcdCluster::write_credentials`] writes (relative to `gate.toml`).
    pub fn registry_toml(&self, prefix: &str, max_stale_secs: u64) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let endpoints = self
            .endpoints()
            .iter()
            .map(|e| q(e))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[registry]\n\
             backend = \"etcd\"\n\
             endpoints = [{endpoints}]\n\
             prefix = {}\n\
             ca = \"registry/etcd-ca.crt\"\n\
             cert = \"registry/gateway.crt\"\n\
             key = \"registry/gateway.key\"\n\
             max_stale_secs = {max_stale_secs}\n",
            q(prefix)
        )
    }

    /// Points a site made by `seibo-gate init` at this cluster: [`EtcdCluster::write_credentials`]
    /// beside `config` (its `gate.toml`) and [`EtcdCluster::registry_toml`] appended to it.
    /// Panics if the file already has a `[registry]` section.
    pub fn configure_gateway(&self, config: &Path, prefix: &str, max_stale_secs: u64) {
        let site = config.parent().expect("gate.toml has a directory");
        self.write_credentials(site);
        let mut text = fs::read_to_string(config).expect("read gate.toml");
        assert!(
            !text.lines().any(|l| l.trim() == "[registry]"),
            "{} already has a [registry] section",
            config.display()
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.registry_toml(prefix, max_stale_secs));
        fs::write(config, text).expect("write gate.toml");
    }

    /// `etcd-client` options for this cluster: TLS with the CA and the gateway's certificate,
    /// 2 s connect timeout, 5 s request timeout.
    pub fn connect_options(&self) -> etcd_client::ConnectOptions {
        let ca = fs::read(self.ca()).expect("read ca.crt");
        let cert = fs::read(self.client_cert()).expect("read gateway.crt");
        let key = fs::read(self.client_key()).expect("read gateway.key");
        etcd_client::ConnectOptions::new()
            .with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca))
                    .identity(etcd_client::Identity::from_pem(cert, key)),
            )
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
    }

    /// An `etcd-client` connected to every member with [`EtcdCluster::connect_options`].
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), Some(self.connect_options()))
            .await
            .unwrap_or_else(|e| panic!("etcd-client connect: {e}\n{}", self.logs()))
    }

    /// An `etcd-client` connected to the given endpoints only (e.g. `[cluster.endpoint(2)]`)
    /// with the given options (start from [`EtcdCluster::connect_options`]).
    pub async fn client_with(
        &self,
        endpoints: &[String],
        options: etcd_client::ConnectOptions,
    ) -> etcd_client::Client {
        etcd_client::Client::connect(endpoints, Some(options))
            .await
            .unwrap_or_else(|e| {
                panic!("etcd-client connect to {endpoints:?}: {e}\n{}", self.logs())
            })
    }

    /// True while member `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Member `i`'s PID while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs member `i` and waits until it is gone.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(c) = self.members[i].child.take() {
            signal(&c, rustix::process::Signal::KILL);
            reap(c, STOP_LIMIT);
        }
    }

    /// Stops member `i` with SIGTERM (SIGKILL after 10 s) and waits until it is gone.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(c) = self.members[i].child.take() {
            signal(&c, rustix::process::Signal::TERM);
            reap(c, STOP_LIMIT);
        }
    }

    /// Starts member `i` again after a kill or stop: same data directory, same ports,
    /// `--initial-cluster-state existing`. Waits (bounded, 15 s) until its client port accepts
    /// TCP connections, not until it has a leader: with the quorum still lost it cannot be
    /// healthy yet (use [`EtcdCluster::wait_healthy`]).
    pub fn restart_member(&mut self, i: usize) {
        self.spawn_member(i, "existing");
        let port = self.members[i].client_port;
        let up = wait_for_tcp(port, Duration::from_secs(15));
        if !up || !self.is_running(i) {
            panic!(
                "etcd member m{i} did not come back on 127.0.0.1:{port}\n{}",
                self.logs()
            );
        }
    }

    /// Runs `etcdctl` (API v3) with the CA and the `etcdctl` client certificate,
    /// `--dial-timeout 2s --command-timeout 5s`, against the members this harness has not
    /// killed or stopped (all of them when none runs). etcdctl 3.4 may send a request to a dead
    /// endpoint and wait there until its command timeout, hence only the running ones.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let running: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        if running.is_empty() {
            self.etcdctl_at(&self.endpoints(), args)
        } else {
            self.etcdctl_at(&running, args)
        }
    }

    /// [`EtcdCluster::etcdctl`] against the given endpoints only.
    pub fn etcdctl_at(&self, endpoints: &[String], args: &[&str]) -> Output {
        let d = self.dir.path();
        let mut cmd = Command::new("etcdctl");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", d.join("ca.crt").display()))
            .arg(format!("--cert={}", d.join("etcdctl.crt").display()))
            .arg(format!("--key={}", d.join("etcdctl.key").display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("run etcdctl (run scripts/install-test-tools if it is missing): {e}")
            })
    }

    /// The member that leads now, as `etcdctl endpoint status` of the running members reports
    /// it (`None` while there is no leader or no member answers).
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json", "--command-timeout=2s"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v.as_array()?;
        let leader = rows
            .iter()
            .filter_map(|r| r["Status"]["leader"].as_u64())
            .find(|l| *l != 0)?;
        let endpoint = rows
            .iter()
            .find(|r| r["Status"]["header"]["member_id"].as_u64() == Some(leader))?["Endpoint"]
            .as_str()?
            .to_string();
        (0..self.members.len()).find(|&i| self.endpoint(i) == endpoint)
    }

    /// Waits until `etcdctl endpoint health` passes for every running member (each check needs
    /// the quorum: it is a linearizable read), at most `limit`. Returns how long it took, or
    /// why not (a member that exited, or the last health output).
    pub fn wait_healthy(&mut self, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            for i in 0..self.members.len() {
                if let Some(c) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        self.members[i].child = None;
                        return Err(format!("etcd member m{i} exited: {status}"));
                    }
                }
            }
            let running: Vec<String> = (0..self.members.len())
                .filter(|&i| self.members[i].child.is_some())
                .map(|i| self.endpoint(i))
                .collect();
            if running.is_empty() {
                return Err("no member is running".into());
            }
            let out = self.etcdctl_at(&running, &["endpoint", "health", "--command-timeout=1s"]);
            if out.status.success() {
                return Ok(start.elapsed());
            }
            let last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if start.elapsed() >= limit {
                return Err(format!("not healthy within {limit:?}; last check:\n{last}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let _ = writeln!(
                s,
                "=== etcd member {} (client {}, peer {}) {} ===\n{}",
                m.name,
                m.client_port,
                m.peer_port,
                m.log.display(),
                tail(&m.log, LOG_TAIL)
            );
        }
        s
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd cluster at the failure:\n{}", self.logs());
        }
        for m in &mut self.members {
            if let Some(c) = m.child.take() {
                signal(&c, rustix::process::Signal::KILL);
                reap(c, STOP_LIMIT);
            }
        }
        // The TempDir removes certificates, data directories and logs.
    }
}
