//! The sample EMR (a small web EMR with a few patients and a page in every category, used by
//! the demo, the tests and the benchmarks) and `seibo-gate demo`, which sets a whole site up on
//! loopback and prints the `curl` lines that show it working.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::admin::{Admin, AdminRequest};
use crate::audit::AuditLog;
use crate::ops::clock::{SharedClock, SystemClock};
use crate::ops::shutdown::{Shutdown, Trigger};
use crate::pages::{self, escape, Body};
use crate::registry::model::{Category, ConsentBy, TerminalKind};
use crate::registry::store::Store;
use crate::site::config::Config;
use crate::site::init::{init, InitOptions};
use crate::site::pki::Ca;

/// The sample EMR's patients: id, name.
pub const PATIENTS: [(&str, &str); 3] = [
    ("P001", "西予 花子 (Saiyo Hanako)"),
    ("P002", "野村 太郎 (Nomura Taro)"),
    ("P003", "宇和 次郎 (Uwa Jiro)"),
];

/// Serves the sample EMR on `listener` until shutdown.
pub async fn serve_sample_emr(listener: TcpListener, mut shutdown: Shutdown) {
    let me = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let me: Arc<str> = Arc::from(me);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.recv() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let me = me.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| emr_page(me.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let page = format!(
        "<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <link rel=\"stylesheet\" href=\"/static/emr.css\"></head><body><h1>{t}</h1>{body}</body></html>\n",
        t = escape(title)
    );
    let mut r = Response::new(pages::full(page));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

async fn emr_page(me: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let seibo: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-seibo-") || k.as_str() == "x-forwarded-for")
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resp = match segs.as_slice() {
        ["static", "emr.css"] => {
            let mut r = Response::new(pages::full(
                "body{font-family:sans-serif;margin:2rem} table{border-collapse:collapse} td,th{border:1px solid #999;padding:.2rem .5rem}\n",
            ));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
            r
        }
        ["patients", id] => {
            // A redirect to the patient's summary page, as EMRs do, with an absolute URL.
            let mut r = html(StatusCode::FOUND, "redirect", "");
            if let Ok(v) = HeaderValue::from_str(&format!("http://{me}/patients/{id}/basic")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        ["patients", id, category, rest @ ..] => {
            let Some((_, name)) = PATIENTS.iter().find(|(p, _)| p == id) else {
                return Ok(html(
                    StatusCode::NOT_FOUND,
                    "患者が見つかりません / no such patient",
                    "",
                ));
            };
            let Ok(cat) = category.parse::<Category>() else {
                return Ok(html(StatusCode::NOT_FOUND, "no such page", ""));
            };
            if let ["blob", size] = rest {
                // A large download (image series) for throughput checks: `size` bytes.
                let n: usize = size.parse().unwrap_or(0).min(256 * 1024 * 1024);
                let mut r = Response::new(pages::full(vec![b'x'; n]));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                return Ok(r);
            }
            let rows: String = seibo
                .iter()
                .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v)))
                .collect();
            html(
                StatusCode::OK,
                &format!("{name} — {cat}"),
                &format!(
                    "<p>Sample EMR page: patient <b>{}</b>, category <b>{cat}</b>{}</p>\
                     <table>{rows}</table>",
                    escape(id),
                    if rest.is_empty() {
                        String::new()
                    } else {
                        format!(", item {}", escape(&rest.join("/")))
                    }
                ),
            )
        }
        [] => html(
            StatusCode::OK,
            "Sample EMR",
            "<ul><li><a href=\"/patients/P001/basic\">P001</a></li></ul>",
        ),
        _ => html(StatusCode::NOT_FOUND, "no such page", ""),
    };
    Ok(resp)
}

/// Picks a free loopback port.
fn free_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

/// What `setup` made.
#[derive(Debug, Clone)]
pub struct DemoSite {
    pub config: Config,
    /// Where demo-pc.crt, .key and .p12 are.
    pub terminals: PathBuf,
    /// dr-saiyo's password.
    pub password: String,
}

/// A demo site in `dir`: init, a sample EMR, one physician with one terminal, one consented
/// and one not-consented patient.
pub async fn setup(dir: &Path, emr: SocketAddr) -> anyhow::Result<DemoSite> {
    let listen = free_port()?;
    let mut o = InitOptions::new(&dir.join("site"));
    o.site = "demo-site".into();
    o.name = Some("せい坊ネット デモ病院 / Seibo Net demo hospital".into());
    o.listen = listen;
    o.upstream = format!("http://{emr}");
    o.private = vec!["127.0.0.0/8".into()];
    o.metrics = Some(free_port()?);
    let cfg = Config::load(&init(&o)?)?;

    let clock: SharedClock = Arc::new(SystemClock);
    let store = Store::open(&cfg.state_dir.join("registry"))?;
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let admin = Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock: clock.clone(),
        metrics: None,
        origin: "cli",
        sessions: None,
        terminals_changed: None,
    };
    let run = |r: AdminRequest| {
        let admin = admin.clone();
        async move {
            let resp = admin.execute(r).await;
            if resp.ok {
                Ok(resp)
            } else {
                Err(anyhow::anyhow!(resp.message))
            }
        }
    };
    let password = crate::policy::auth::generate_password();
    run(AdminRequest::PhysicianAdd {
        id: "dr-saiyo".into(),
        name: "西予 一郎".into(),
        site: None,
        password_hash: Some(crate::policy::auth::hash_password(&password)?),
        form_ref: Some("様式3-demo-001".into()),
    })
    .await?;
    // The demo's password is shown on screen: no forced change at first sign-in.
    store
        .update_physician("dr-saiyo", |p| p.must_change_password = false)
        .await?;
    let ca = Ca::load(&cfg.ca.cert, &cfg.ca.key)?;
    let tdir = dir.join("terminals");
    let req = crate::admin::terminal_issue::Request {
        physician: "dr-saiyo",
        name: "demo-pc",
        out: &tdir,
        days: 30,
        now: clock.now(),
    };
    let issued =
        crate::admin::terminal_issue::certificate(&ca, TerminalKind::Terminal, "西予 一郎", &req)?;
    crate::site::pki::write_new_file(
        &tdir.join("demo-pc.p12.password"),
        issued.files.p12_password.as_bytes(),
        0o600,
    )?;
    run(AdminRequest::TerminalRegister {
        terminal: issued.terminal,
    })
    .await?;
    run(AdminRequest::ConsentGrant {
        patient: "P001".into(),
        by: ConsentBy::Patient,
        published: clock.today(),
        no_extension: false,
        form_ref: "様式6-demo-001".into(),
        links: Vec::new(),
        explanation: None,
    })
    .await?;
    audit.close().await?;
    store.flush()?;
    drop(store);
    Ok(DemoSite {
        config: cfg,
        terminals: tdir,
        password,
    })
}

/// `seibo-gate demo`: runs until Ctrl-C.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("seibo-gate-demo-")
        .tempdir()?;
    let (trigger, shutdown) = crate::ops::shutdown::channel();
    let emr_listener = TcpListener::bind("127.0.0.1:0").await?;
    let emr = emr_listener.local_addr()?;
    let emr_task = tokio::spawn(serve_sample_emr(emr_listener, shutdown.clone()));
    let DemoSite {
        config: cfg,
        terminals: tdir,
        password,
    } = setup(dir.path(), emr).await?;
    let listen = cfg
        .listeners
        .first()
        .map(|l| l.listen)
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let ca = cfg.ca.cert.clone();
    let config_path = cfg.path.clone();
    // The binary as it was started (`cargo run` does not put it on PATH).
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("seibo-gate"));
    let on_ready = |ready: &crate::ops::server::Ready| {
        let jar = tdir.join("cookies.txt");
        let curl = format!(
            "curl --cacert {} --cert {} --key {} -b {}",
            ca.display(),
            tdir.join("demo-pc.crt").display(),
            tdir.join("demo-pc.key").display(),
            jar.display()
        );
        let base = format!("https://localhost:{}", listen.port());
        println!(
            "\nseibo-gate demo is running (sample EMR on http://{emr}, gateway on {base}).\n\
             Site directory: {}\n\n\
             # 0. Sign in (second factor: physician dr-saiyo, password {password}); the session cookie goes to the jar.\n\
             #    Prints the status (303) and the page it sends you to.\n\
             {curl} -c {jar} -d id=dr-saiyo -d password={password} -sS -o /dev/null -w 'HTTP %{{http_code}} -> %{{redirect_url}}\\n' {base}/.seibo/login\n\n\
             # 1. Allowed: patient P001 consented, physician dr-saiyo on registered terminal demo-pc.\n\
             #    Prints the EMR's page (it lists the X-Seibo-* headers the gateway set) and HTTP 200.\n\
             {curl} -sS -w '\\nHTTP %{{http_code}}\\n' {base}/patients/P001/labs\n\n\
             # 2. Refused: patient P002 has no consent. Prints the page's heading, Japanese then English, and HTTP 403.\n\
             {curl} -sS -w '\\nHTTP %{{http_code}}\\n' {base}/patients/P002/labs | grep -E '^HTTP|<h1>|<h2'\n\n\
             # 3. Refused: a page outside the route table (default deny). Prints the heading and HTTP 404.\n\
             {curl} -sS -w '\\nHTTP %{{http_code}}\\n' {base}/admin/users | grep -E '^HTTP|<h1>|<h2'\n\n\
             # 4. Refused at the handshake: no client certificate. curl prints the gateway's TLS alert,\n\
             #    \"alert certificate required\" (TLS 1.2 here: over TLS 1.3 the alert follows the handshake\n\
             #    and curl may report only the closed connection), and no HTTP status at all.\n\
             curl -sS --tls-max 1.2 --cacert {ca_cert} {base}/patients/P001/labs\n\n\
             # 5. The audit, and its hash chain\n\
             {exe} audit query --config {cfg} --json\n\
             {exe} audit verify --config {cfg}\n\n\
             # 6. Withdraw P001's consent while serving, then retry 1.\n\
             {exe} consent withdraw --config {cfg} --patient P001 --form-ref 様式7-demo\n\n\
             Metrics: {}\n\
             A browser works too: import {p12} (password in {p12pw}), open {base}/patients/P001/labs.\n\
             Press Ctrl-C to stop.",
            config_path.parent().unwrap_or(Path::new(".")).display(),
            ready
                .metrics
                .map(|m| format!("curl http://{m}/metrics"))
                .unwrap_or_else(|| "off".into()),
            ca_cert = ca.display(),
            cfg = config_path.display(),
            exe = exe.display(),
            jar = jar.display(),
            p12 = tdir.join("demo-pc.p12").display(),
            p12pw = tdir.join("demo-pc.p12.password").display(),
        );
    };
    let serve = crate::ops::server::run(cfg.clone(), Arc::new(SystemClock), &trigger, on_ready);
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        _ = tokio::signal::ctrl_c() => {
            trigger.fire();
            serve.await
        }
    };
    trigger.fire();
    let _ = emr_task.await;
    result?;
    Ok(())
}

/// `seibo-gate sample-emr --listen ADDR`: the sample EMR alone (tests, benchmarks).
pub async fn run_sample_emr(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    println!("sample EMR on http://{}", l.local_addr()?);
    let (trigger, shutdown): (Trigger, Shutdown) = crate::ops::shutdown::channel();
    let t = tokio::spawn(serve_sample_emr(l, shutdown));
    let _ = tokio::signal::ctrl_c().await;
    trigger.fire();
    let _ = t.await;
    Ok(())
}
