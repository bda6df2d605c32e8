//! `seibo-gate demo --network`: Seibo Net as one network on loopback. Two sites — 西予市民病院
//! (Seiyo City Hospital, the network's home) and 野村診療所 (Nomura Clinic) — each with its
//! sample EMR and its gateway, made by `network init`, `site add` and `init --join`, sharing
//! one regional registry: a local etcd member (the `etcd` binary from Debian's `etcd-server`)
//! with a certificate from the network's etcd CA.
//!
//! It registers one physician and one terminal at the hospital, grants patient P001's consent
//! at the clinic, and proves with real requests (mutual TLS, sign-in) that the consent given at
//! the clinic opens the hospital's records, and that a withdrawal at the hospital is refused at
//! the clinic at the next request. Then it keeps serving until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;

use crate::admin::{AdminRequest, AdminResponse};
use crate::ops::clock::{SharedClock, SystemClock};
use crate::registry::model::{ConsentBy, TerminalKind};
use crate::registry::store::Store;
use crate::site::config::Config;
use crate::site::init::InitOptions;
use crate::site::network::{self, NetworkInitOptions, SiteAddOptions};
use crate::site::pki::Ca;

const HOSPITAL: &str = "seiyo-hospital";
const CLINIC: &str = "nomura-clinic";

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The `etcd` binary on PATH, or a clear error saying how to install it.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "demo --network needs etcd (the regional registry): apt-get install etcd-server \
                 (scripts/install-test-tools installs it); the plain `demo` needs nothing"
            )
        })
}

/// One etcd member on loopback with TLS and client-certificate authentication.
fn start_etcd(
    bin: &Path,
    files: &network::etcd::MemberFiles,
    client: SocketAddr,
    peer: SocketAddr,
    data: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::File::create(data.with_extension("log"))?;
    let c = format!("https://{client}");
    let p = format!("https://{peer}");
    tokio::process::Command::new(bin)
        .args(["--name", "demo-etcd", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("demo-etcd={p}")])
        .args(["--client-cert-auth", "--peer-client-cert-auth"])
        .arg("--cert-file")
        .arg(&files.cert)
        .arg("--key-file")
        .arg(&files.key)
        .arg("--trusted-ca-file")
        .arg(&files.ca)
        .arg("--peer-cert-file")
        .arg(&files.cert)
        .arg("--peer-key-file")
        .arg(&files.key)
        .arg("--peer-trusted-ca-file")
        .arg(&files.ca)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("start etcd")
}

/// The two sites' configs, made as two admins would: `network init`, `site add`,
/// `init --join`.
fn make_sites(dir: &Path, emr: [SocketAddr; 2], etcd: SocketAddr) -> anyhow::Result<[Config; 2]> {
    let mut site = InitOptions::new(&dir.join(HOSPITAL));
    site.site = HOSPITAL.into();
    site.name = Some("西予市民病院 / Seiyo City Hospital".into());
    site.listen = free_port()?;
    site.upstream = format!("http://{}", emr[0]);
    site.private = vec!["127.0.0.0/8".into()];
    site.metrics = Some(free_port()?);
    let home = network::network_init(&NetworkInitOptions {
        site,
        network: "seibo-net".into(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        peer_listen: free_port()?,
        etcd: vec![format!("https://{etcd}")],
        permit: Vec::new(),
    })?;
    let added = network::add_site(
        &Config::load(&home)?,
        &SiteAddOptions {
            site: CLINIC.into(),
            name: Some("野村診療所 / Nomura Clinic".into()),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            peer_listen: free_port()?,
            wireguard: None,
            out: dir.join("nomura-clinic-bundle"),
        },
    )?;
    let mut o = InitOptions::new(&dir.join(CLINIC));
    o.listen = free_port()?;
    o.upstream = format!("http://{}", emr[1]);
    o.private = vec!["127.0.0.0/8".into()];
    o.metrics = Some(free_port()?);
    let clinic = network::join(&added.bundle, &o)?;
    Ok([Config::load(&home)?, Config::load(&clinic)?])
}

/// An admin request on a running gateway's socket.
async fn admin(cfg: &Config, req: AdminRequest) -> anyhow::Result<AdminResponse> {
    let r = crate::admin::call(&cfg.admin_socket, &req)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no gateway answers on {}", cfg.admin_socket.display()))?;
    anyhow::ensure!(r.ok, "{}", r.message);
    Ok(r)
}

/// A browser on the demo terminal: mutual TLS to a gateway, one request a connection.
struct Browser {
    tls: Arc<rustls::ClientConfig>,
    cookie: Option<String>,
}

impl Browser {
    fn new(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Browser> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Browser {
            tls: Arc::new(tls),
            cookie: None,
        })
    }

    /// `method path` at `port` (a form body for POST); the status and the page.
    async fn send(
        &mut self,
        port: u16,
        method: &str,
        path: &str,
        form: &str,
    ) -> anyhow::Result<(u16, String)> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("localhost:{port}"));
        if let Some(c) = &self.cookie {
            b = b.header(http::header::COOKIE, c.as_str());
        }
        if method == "POST" {
            b = b.header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let resp = send
            .send_request(b.body(Full::new(Bytes::from(form.to_string())))?)
            .await?;
        if let Some(c) = resp.headers().get(http::header::SET_COOKIE) {
            let c = c.to_str().unwrap_or_default();
            self.cookie = c.split(';').next().map(str::to_string);
        }
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The page's first heading (for a refusal: Japanese, then English).
fn heading(page: &str) -> String {
    page.split("<h1>")
        .nth(1)
        .and_then(|h| h.split("</h1>").next())
        .unwrap_or("")
        .to_string()
}

/// Registers, grants, views and withdraws across the two sites, printing what happens.
async fn script(sites: &[Config; 2], ports: [u16; 2], dir: &Path) -> anyhow::Result<()> {
    let [hospital, clinic] = sites;
    let clock: SharedClock = Arc::new(SystemClock);
    let password = crate::policy::auth::generate_password();
    admin(
        hospital,
        AdminRequest::PhysicianAdd {
            id: "dr-saiyo".into(),
            name: "西予 一郎".into(),
            site: Some(HOSPITAL.into()),
            password_hash: Some(crate::policy::auth::hash_password(&password)?),
            form_ref: Some("様式3-demo-001".into()),
        },
    )
    .await?;
    // The demo's password is shown on screen: no forced change at first sign-in.
    let store = Store::open_configured(hospital).await?;
    store.ready(std::time::Duration::from_secs(10)).await?;
    store
        .update_physician("dr-saiyo", |p| p.must_change_password = false)
        .await?;
    let ca = Ca::load(&hospital.ca.cert, &hospital.ca.key)?;
    let tdir = dir.join("terminals");
    let issued = crate::admin::terminal_issue::certificate(
        &ca,
        TerminalKind::Terminal,
        "西予 一郎",
        &crate::admin::terminal_issue::Request {
            physician: "dr-saiyo",
            name: "demo-pc",
            out: &tdir,
            days: 30,
            now: clock.now(),
        },
    )?;
    let files = issued.files.clone();
    admin(
        hospital,
        AdminRequest::TerminalRegister {
            terminal: issued.terminal,
        },
    )
    .await?;
    println!("network demo: physician dr-saiyo and terminal demo-pc registered once, at {HOSPITAL} (西予市民病院)");
    admin(
        clinic,
        AdminRequest::ConsentGrant {
            patient: "P001".into(),
            by: ConsentBy::Patient,
            published: clock.today(),
            no_extension: false,
            form_ref: "様式6-demo-001".into(),
            // The patient's id in the hospital's EMR (the two sample EMRs both call it P001).
            links: vec![format!("{HOSPITAL}:P001")],
            explanation: None,
        },
    )
    .await?;
    println!(
        "network demo: consent for P001 granted at {CLINIC} (野村診療所), form 様式6-demo-001"
    );

    let mut b = Browser::new(&hospital.ca.cert, &files.cert_path, &files.key_path)?;
    let form = format!("id=dr-saiyo&password={password}&next=/");
    let (status, _) = b.send(ports[0], "POST", "/.seibo/login", &form).await?;
    anyhow::ensure!(status == 303, "sign-in at {HOSPITAL}: HTTP {status}");
    let (status, _) = b.send(ports[0], "GET", "/patients/P001/labs", "").await?;
    println!("network demo: {HOSPITAL} GET /patients/P001/labs -> HTTP {status} (the clinic's consent holds at the hospital)");
    admin(
        hospital,
        AdminRequest::ConsentWithdraw {
            patient: "P001".into(),
            form_ref: "様式7-demo-001".into(),
            by: Some(ConsentBy::Patient),
        },
    )
    .await?;
    println!("network demo: consent for P001 withdrawn at {HOSPITAL}, form 様式7-demo-001");
    let (status, page) = b.send(ports[1], "GET", "/patients/P001/labs", "").await?;
    println!(
        "network demo: {CLINIC} GET /patients/P001/labs -> HTTP {status} ({}; the same session, signed in at the hospital)",
        heading(&page)
    );
    println!(
        "\nBoth gateways keep running (hospital https://localhost:{}, clinic https://localhost:{}).\n\
         Terminal: {} (password in {}.password); CA: {}\n\
         Press Ctrl-C to stop.",
        ports[0],
        ports[1],
        files.p12_path.display(),
        files.p12_path.display(),
        hospital.ca.cert.display()
    );
    Ok(())
}

/// `seibo-gate demo --network`: runs until Ctrl-C.
pub async fn run() -> anyhow::Result<()> {
    let bin = etcd_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("seibo-gate-network-demo-")
        .tempdir()?;
    let (trigger, shutdown) = crate::ops::shutdown::channel();
    let mut emrs = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        emrs.push(l.local_addr()?);
        tokio::spawn(super::demo::serve_sample_emr(l, shutdown.clone()));
    }
    let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
    let sites = make_sites(dir.path(), [emrs[0], emrs[1]], etcd_client)?;
    let member = network::etcd::issue_member(
        &sites[0],
        "demo-etcd",
        &["localhost".into(), "127.0.0.1".into()],
        &dir.path().join("etcd"),
    )?;
    let _etcd = start_etcd(
        &bin,
        &member,
        etcd_client,
        etcd_peer,
        &dir.path().join("etcd/data"),
    )?;
    println!(
        "network demo: {HOSPITAL} and {CLINIC} in {}, one regional registry (etcd on {etcd_client})",
        dir.path().display()
    );
    let ports = [
        sites[0].listeners.first().map_or(0, |l| l.listen.port()),
        sites[1].listeners.first().map_or(0, |l| l.listen.port()),
    ];
    let clock: SharedClock = Arc::new(SystemClock);
    let (a_ready, a_rx) = tokio::sync::oneshot::channel();
    let (b_ready, b_rx) = tokio::sync::oneshot::channel();
    let serve_a = crate::ops::server::run(sites[0].clone(), clock.clone(), &trigger, |_| {
        let _ = a_ready.send(());
    });
    let serve_b = crate::ops::server::run(sites[1].clone(), clock, &trigger, |_| {
        let _ = b_ready.send(());
    });
    let demo = async {
        let _ = tokio::join!(a_rx, b_rx);
        script(&sites, ports, dir.path()).await
    };
    tokio::pin!(serve_a, serve_b, demo);
    let mut scripted = false;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            r = &mut serve_a => break r.context(HOSPITAL),
            r = &mut serve_b => break r.context(CLINIC),
            r = &mut demo, if !scripted => {
                scripted = true;
                if let Err(e) = r {
                    break Err(e);
                }
            }
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    trigger.fire();
    outcome
}
