//! The peer API's one request: `GET /.seibo/peer/audit?patient=ID` (or `physician=ID`, with
//! optional `since` and `until`, RFC 3339) → this site's audit rows, JSON lines, oldest first.
//! Nothing else is served (404, 405). Every query, answered or refused, is written to this
//! site's audit first (ingress `peer`, the asking site in `cn`); when that record cannot be
//! written the query is refused (503).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::audit::{self, AuditLog, Decision, Ingress, Outcome, QueryFilter, RequestRecord};
use crate::ops::clock::{self, SharedClock};
use crate::registry::ids::{PatientId, PhysicianId};

/// The path of the one query the peer API answers.
pub const AUDIT_PATH: &str = "/.seibo/peer/audit";
/// Longest request target kept in the audit record.
const MAX_TARGET: usize = 512;

/// What answering a query needs.
pub struct PeerService {
    pub site: String,
    pub audit_dir: PathBuf,
    pub audit: AuditLog,
    pub clock: SharedClock,
}

/// Who asked: the site named by its gateway certificate.
#[derive(Debug, Clone)]
pub struct Asker {
    pub site: String,
    pub serial: String,
    pub addr: SocketAddr,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A refused query: its status and why.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    why: String,
}

fn refusal(status: StatusCode, why: &str) -> Refusal {
    Refusal {
        status,
        why: why.to_string(),
    }
}

impl Refusal {
    fn reply(&self) -> Reply {
        reply(
            self.status,
            "text/plain; charset=utf-8",
            format!("{}\n", self.why),
        )
    }
}

impl PeerService {
    /// Answers one request of `asker`.
    pub async fn answer(&self, method: &Method, target: &http::Uri, asker: &Asker) -> Reply {
        let started = Instant::now();
        let decided = decide(method, target);
        let (decision, reason) = match &decided {
            Ok(_) => (Decision::Allow, "peer-audit-query".to_string()),
            Err(r) => (Decision::Deny, format!("peer-refused: {}", r.why)),
        };
        let shown: String = target.to_string().chars().take(MAX_TARGET).collect();
        let rec = RequestRecord {
            time: clock::rfc3339(self.clock.now()),
            site: self.site.clone(),
            ingress: Ingress::Peer,
            client: asker.addr.to_string(),
            terminal: None,
            physician: None,
            method: method.as_str().chars().take(16).collect(),
            path: shown,
            patient: None,
            category: None,
            decision,
            reason,
            serial: Some(asker.serial.clone()),
            cn: Some(asker.site.clone()),
            staff: None,
        };
        let rid = match self.audit.record(rec).await {
            Ok(rid) => rid,
            Err(e) => {
                tracing::error!(error = %e, "peer API: audit record not written; query refused");
                return refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this site's audit cannot be written: query refused",
                )
                .reply();
            }
        };
        let r = match decided {
            Ok(filter) => self.rows(filter).await,
            Err(r) => r.reply(),
        };
        let bytes = http_body::Body::size_hint(r.body()).exact().unwrap_or(0);
        self.audit.outcome(
            rid,
            Outcome {
                status: r.status().as_u16(),
                bytes,
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            },
        );
        r
    }

    /// This site's rows for `filter`, JSON lines.
    async fn rows(&self, filter: QueryFilter) -> Reply {
        let dir = self.audit_dir.clone();
        let rows = tokio::task::spawn_blocking(move || audit::query(&dir, &filter)).await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "peer API: audit query failed");
                return refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("this site's audit cannot be read: {e}"),
                )
                .reply();
            }
            Err(e) => {
                return refusal(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()).reply();
            }
        };
        let mut body = Vec::new();
        for r in &rows {
            if serde_json::to_writer(&mut body, r).is_ok() {
                body.push(b'\n');
            }
        }
        reply(StatusCode::OK, "application/x-ndjson", body)
    }
}

/// The filter a request asks for, or its refusal.
fn decide(method: &Method, target: &http::Uri) -> Result<QueryFilter, Refusal> {
    if target.path() != AUDIT_PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "the peer API answers audit queries only (GET /.seibo/peer/audit)",
        ));
    }
    if method != Method::GET {
        return Err(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "the peer API is read-only: GET only",
        ));
    }
    let mut f = QueryFilter::default();
    let mut seen = Vec::new();
    for (k, v) in form_urlencoded::parse(target.query().unwrap_or("").as_bytes()) {
        if seen.contains(&k) {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                &format!("{k} given twice"),
            ));
        }
        seen.push(k.clone());
        let bad = |what: &str| refusal(StatusCode::BAD_REQUEST, &format!("{k}: {what}"));
        match k.as_ref() {
            "patient" if PatientId::is_valid(&v) => f.patient = Some(v.into_owned()),
            "physician" if PhysicianId::is_valid(&v) => f.physician = Some(v.into_owned()),
            "patient" | "physician" => return Err(bad("not a valid id")),
            "since" | "until" => {
                let t = audit::parse_time_arg(&v).map_err(|e| bad(&e.to_string()))?;
                if k == "since" {
                    f.since = Some(t);
                } else {
                    f.until = Some(t);
                }
            }
            _ => return Err(bad("unknown parameter (patient, physician, since, until)")),
        }
    }
    if f.patient.is_none() && f.physician.is_none() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "name a patient or a physician: the whole log is never handed out",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn art_12_8_peer_api_answers_audit_queries_of_a_patient_or_physician_only() {
        let f = decide(
            &Method::GET,
            &uri("/.seibo/peer/audit?patient=N-778&since=2026-01-01"),
        )
        .expect("a patient query");
        assert_eq!(f.patient.as_deref(), Some("N-778"));
        assert!(f.since.is_some());
        for (m, t, status) in [
            (Method::GET, "/patients/P1/labs", 404),
            (Method::POST, "/.seibo/peer/audit?patient=P1", 405),
            (Method::GET, "/.seibo/peer/audit", 400),
            (Method::GET, "/.seibo/peer/audit?since=2026-01-01", 400),
            (Method::GET, "/.seibo/peer/audit?patient=P1&patient=P2", 400),
            (Method::GET, "/.seibo/peer/audit?patient=P1&admin=1", 400),
            (Method::GET, "/.seibo/peer/audit?patient=..%2Fx", 400),
        ] {
            match decide(&m, &uri(t)) {
                Ok(_) => panic!("{m} {t} must be refused"),
                Err(r) => assert_eq!(r.status.as_u16(), status, "{m} {t}"),
            }
        }
    }
}
