//! `audit query --network` (art 12.8, a patient's disclosure request): asks every site of
//! `[network]` over mutual TLS with this site's gateway certificate (`[peer] cert`), merges
//! the rows sorted by time with the site named on each, and names every site that did not
//! answer (exit 69, the answer is incomplete). A patient's id differs per EMR: `--patient
//! SITE:ID` (repeatable) names it per site; a bare ID is asked of every site not named.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ingress::peer_api::{verify, AUDIT_PATH};
use crate::ops::exit::{self, ConfigProblem, UsageError};
use crate::registry::ids::PatientId;
use crate::site::config::{Config, NetworkSite};

/// Longest wait for one site's answer, connection to last byte.
const SITE_LIMIT: Duration = Duration::from_secs(30);
/// Largest answer read from one site.
const MAX_ANSWER: usize = 256 << 20;

/// `audit query --network`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct NetworkQuery {
    /// `SITE:ID` or `ID`, repeatable.
    pub patients: Vec<String>,
    pub physician: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub json: bool,
}

/// The patient id to ask each site for, from `--patient` values.
pub fn patient_per_site(
    sites: &[NetworkSite],
    values: &[String],
) -> Result<BTreeMap<String, String>, UsageError> {
    let mut named = BTreeMap::new();
    let mut bare = None;
    for v in values {
        let (site, id) = match v.split_once(':') {
            Some((s, id)) => (Some(s), id),
            None => (None, v.as_str()),
        };
        if !PatientId::is_valid(id) {
            return Err(UsageError(format!(
                "--patient {v:?}: {id:?} is not a patient id"
            )));
        }
        match site {
            Some(s) => {
                if !sites.iter().any(|x| x.id == s) {
                    let known: Vec<&str> = sites.iter().map(|x| x.id.as_str()).collect();
                    return Err(UsageError(format!(
                        "--patient {v:?}: {s:?} is not a site of [network] ({})",
                        known.join(", ")
                    )));
                }
                if named.insert(s.to_string(), id.to_string()).is_some() {
                    return Err(UsageError(format!("--patient: site {s} named twice")));
                }
            }
            None if bare.is_some() => {
                return Err(UsageError(
                    "--patient: one bare ID at most (name the others SITE:ID)".into(),
                ))
            }
            None => bare = Some(id.to_string()),
        }
    }
    if let Some(id) = bare {
        for s in sites {
            named.entry(s.id.clone()).or_insert_with(|| id.clone());
        }
    }
    Ok(named)
}

/// What every site answered: the merged rows (sorted by time), the sites that did not answer
/// (and why), the sites not asked (no patient id given for them), how many answered.
#[derive(Debug, Default)]
pub struct Collected {
    pub rows: Vec<Row>,
    pub missing: Vec<(NetworkSite, String)>,
    pub not_asked: Vec<String>,
    pub answered: usize,
}

/// Runs the query; prints the merged rows and the sites that did not answer.
pub async fn query(c: &Config, q: NetworkQuery) -> anyhow::Result<ExitCode> {
    let json = q.json;
    let Collected {
        rows,
        mut missing,
        not_asked,
        answered,
    } = collect(c, &q).await?;
    print_rows(&rows, json)?;
    for s in &not_asked {
        eprintln!("seibo-gate: site {s} not asked: no --patient {s}:ID given");
    }
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    missing.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (site, why) in &missing {
        eprintln!(
            "seibo-gate: site {} ({}, {}) DID NOT ANSWER: {why}",
            site.id,
            site.name,
            crate::site::network::host_port(&site.peer_host, site.peer_port)
        );
    }
    let names: Vec<&str> = missing.iter().map(|(s, _)| s.id.as_str()).collect();
    eprintln!(
        "seibo-gate: INCOMPLETE: {} of {} sites asked did not answer ({}); their rows are missing above",
        missing.len(),
        missing.len() + answered,
        names.join(", ")
    );
    Ok(ExitCode::from(exit::UNAVAILABLE))
}

/// Asks every site of `[network]` (the console's disclosure report uses it too, issue 15).
pub async fn collect(c: &Config, q: &NetworkQuery) -> anyhow::Result<Collected> {
    let network = c.network.as_ref().ok_or_else(|| {
        ConfigProblem(
            "--network: this site's config has no [network] (the sites to ask): `network init` \
             or `init --join` writes it"
                .into(),
        )
    })?;
    let peer = c.peer.as_ref().ok_or_else(|| {
        ConfigProblem(
            "--network: this site's config has no [peer] (its gateway certificate is what it \
             asks the other sites with)"
                .into(),
        )
    })?;
    if q.patients.is_empty() && q.physician.is_none() {
        return Err(UsageError(
            "--network: name a patient (--patient SITE:ID, repeatable) or a physician".into(),
        )
        .into());
    }
    let (since, until) = super::audit::time_range(c, q.since.as_deref(), q.until.as_deref())?;
    let patients = patient_per_site(&network.sites, &q.patients)?;
    let tls = verify::client_config(&peer.cert, &peer.key, &c.ca.cert)
        .context("this site's gateway certificate ([peer] cert, key)")?;

    let mut asked = tokio::task::JoinSet::new();
    let mut not_asked = Vec::new();
    for site in &network.sites {
        let mut params = form_urlencoded::Serializer::new(String::new());
        if !q.patients.is_empty() {
            match patients.get(&site.id) {
                Some(p) => {
                    params.append_pair("patient", p);
                }
                None => {
                    not_asked.push(site.id.clone());
                    continue;
                }
            }
        }
        if let Some(p) = &q.physician {
            params.append_pair("physician", p);
        }
        for (k, t) in [("since", since), ("until", until)] {
            if let Some(t) = t {
                params.append_pair(k, &t.format(&Rfc3339).unwrap_or_default());
            }
        }
        let target = format!("{AUDIT_PATH}?{}", params.finish());
        let site = site.clone();
        let tls = tls.clone();
        asked.spawn(async move {
            let r = tokio::time::timeout(SITE_LIMIT, ask(&site, tls, &target)).await;
            let r = match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within {SITE_LIMIT:?}")),
            };
            (site, r)
        });
    }
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut answered = 0usize;
    while let Some(done) = asked.join_next().await {
        let (site, r) = done.context("a query task failed")?;
        match r {
            Ok(mut answer) => {
                answered += 1;
                rows.append(&mut answer);
            }
            Err(e) => missing.push((site, format!("{e:#}"))),
        }
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(Collected {
        rows,
        missing,
        not_asked,
        answered,
    })
}

/// A row: its time, its site, the line as the site sent it.
pub type Row = (OffsetDateTime, String, serde_json::Value);

/// Asks one site; its rows.
async fn ask(
    site: &NetworkSite,
    tls: Arc<rustls::ClientConfig>,
    target: &str,
) -> anyhow::Result<Vec<Row>> {
    let tcp = TcpStream::connect((site.peer_host.as_str(), site.peer_port))
        .await
        .context("connect")?;
    let name = ServerName::try_from(site.peer_host.clone()).context("server name")?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let answered_as = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(verify::site_gateway_of);
    if answered_as.as_deref() != Some(site.id.as_str()) {
        anyhow::bail!(
            "answered with the certificate of site {:?}, not {}",
            answered_as.unwrap_or_default(),
            site.id
        );
    }
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP")?;
    tokio::spawn(conn);
    let req = http::Request::get(target)
        .header(http::header::HOST, site.peer_host.as_str())
        .body(Empty::<Bytes>::new())
        .context("request")?;
    let resp = send.send_request(req).await.context("HTTP request")?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let mut rows = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(line)
            .with_context(|| format!("answer line {}: not JSON", i + 1))?;
        let t = v["time"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .with_context(|| format!("answer line {}: no RFC 3339 time", i + 1))?;
        if v["site"].as_str() != Some(site.id.as_str()) {
            anyhow::bail!(
                "answer line {}: a row of site {:?}, not {}",
                i + 1,
                v["site"],
                site.id
            );
        }
        rows.push((t, site.id.clone(), v));
    }
    Ok(rows)
}

/// The merged rows: JSON lines as the sites sent them (each names its `site`), or a table
/// whose first column is the site.
fn print_rows(rows: &[Row], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (_, site, v) in rows {
        if json {
            writeln!(out, "{v}")?;
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        writeln!(
            out,
            "{site:<16} {} {:<5} {:<26} {:<9} phys={} term={} patient={} {} {} → {}",
            s("time"),
            s("decision"),
            s("reason"),
            s("ingress"),
            s("physician"),
            s("terminal"),
            s("patient"),
            s("method"),
            s("path"),
            v["status"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        )?;
    }
    Ok(())
}
