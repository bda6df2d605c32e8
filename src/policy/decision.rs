//! Step 3 of the request path: the decision. Identity, route and consent are checked in that
//! order, default deny; a refusal is a value ([`Refusal`]), not an error. Store failures are
//! refusals too (fail closed).

use std::sync::Arc;

use http::StatusCode;
use time::OffsetDateTime;

use crate::policy::consent::{self, ConsentRefusal, Window};
use crate::policy::identity::{ConnIdentity, IdentityRefusal, SiteSystemRefusal, Who};
use crate::policy::route::{RouteError, RouteTable, Target};
use crate::policy::session::SessionRefusal;
use crate::registry::store::{Store, StoreError};

/// The policy's answer for a request to the EMR: allowed with everything forwarding needs, or
/// denied with as much as was learnt (a refusal's audit record names what is known). An allowed
/// request always has its physician and its target: no other state can be written.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

/// An allowed request: who, what, and the viewing window it is forwarded with.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The active terminal and physician.
    pub who: Arc<Who>,
    /// What the request is for: this normalised target is what is forwarded.
    pub target: Target,
    /// The viewable window, when the request is for a consented patient.
    pub window: Option<Window>,
    /// True for the patient's first allowed view of the day: `last_view` must move (art 8.3).
    pub first_view_today: bool,
}

/// A refused request, with what the request path knew when it refused.
#[derive(Debug, Clone)]
pub struct Denied {
    pub refusal: Refusal,
    /// The active terminal and physician, when they were resolved.
    pub who: Option<Arc<Who>>,
    /// What the request was for, when it was routed.
    pub target: Option<Target>,
}

impl Decision {
    pub fn deny(refusal: Refusal, who: Option<Arc<Who>>, target: Option<Target>) -> Decision {
        Decision::Deny(Denied {
            refusal,
            who,
            target,
        })
    }
}

/// Whether a page of the gateway's own (sign-in, password change, "who am I") counts as an
/// allowed or a refused request in the audit and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Refusal),
}

/// Why a request is refused. One variant per stage, each mapped to a status and a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Identity(IdentityRefusal),
    #[error("{0}")]
    Route(RouteError),
    #[error("{0}")]
    Consent(ConsentRefusal),
    /// The registry could not be read: fail closed.
    #[error("the registry is unavailable")]
    StoreUnavailable,
    /// The regional registry has not been confirmed current for longer than
    /// `[registry] max_stale_secs` (etcd unreachable, no quorum): fail closed.
    #[error("the regional registry cannot be reached")]
    RegistryUnavailable,
    /// The audit record could not be written: fail closed (art 12.8).
    #[error("the audit log is unavailable")]
    AuditUnavailable,
    /// The EMR could not be reached or answered badly.
    #[error("the EMR is unreachable")]
    UpstreamUnreachable,
    #[error("the EMR did not answer in time")]
    UpstreamTimeout,
    /// No valid sign-in session (art 6.3, 13.1).
    #[error("{0}")]
    Session(SessionRefusal),
    /// The one-time password has not been changed yet.
    #[error("the password must be changed first")]
    PasswordChangeRequired,
    /// The EMR's response would save a file (art 13.2.5).
    #[error("downloads are blocked")]
    DownloadBlocked,
    /// A request on the site-system listener that cannot be trusted (art 6.1).
    #[error("site system refused: {0}")]
    SiteSystem(SiteSystemRefusal),
    /// The request's framing or headers are ambiguous (e.g. `Transfer-Encoding` from a
    /// client): answer 400, never forward.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client went away while its request body was being forwarded (issue 11 item 9): its
    /// outcome says `client-closed`; the page is never seen.
    #[error("the client went away")]
    ClientClosed,
    /// The request body is larger than the route allows.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// Too many request header fields.
    #[error("too many request headers")]
    HeadersTooLarge,
    /// This terminal already has as many connections open as it may.
    #[error("too many connections from this terminal")]
    TooManyConnections,
}

impl Refusal {
    /// The short reason written to the audit and the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Identity(r) => r.reason(),
            Refusal::Route(r) => r.reason(),
            Refusal::Consent(r) => r.reason(),
            Refusal::StoreUnavailable => "store-unavailable",
            Refusal::RegistryUnavailable => "registry-unavailable",
            Refusal::AuditUnavailable => "audit-unavailable",
            Refusal::UpstreamUnreachable => "upstream-unreachable",
            Refusal::UpstreamTimeout => "upstream-timeout",
            Refusal::Session(r) => r.reason(),
            Refusal::PasswordChangeRequired => "password-change-required",
            Refusal::DownloadBlocked => "download-blocked",
            Refusal::SiteSystem(r) => r.reason(),
            Refusal::BadRequest(r) => r,
            Refusal::ClientClosed => "client-closed",
            Refusal::BodyTooLarge => "body-too-large",
            Refusal::HeadersTooLarge => "headers-too-large",
            Refusal::TooManyConnections => "too-many-connections",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Identity(_)
            | Refusal::Consent(_)
            | Refusal::PasswordChangeRequired
            | Refusal::DownloadBlocked
            | Refusal::SiteSystem(_) => StatusCode::FORBIDDEN,
            Refusal::Session(_) => StatusCode::UNAUTHORIZED,
            Refusal::Route(RouteError::NoRoute) => StatusCode::NOT_FOUND,
            Refusal::Route(RouteError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Route(_) | Refusal::BadRequest(_) | Refusal::ClientClosed => {
                StatusCode::BAD_REQUEST
            }
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Refusal::StoreUnavailable
            | Refusal::RegistryUnavailable
            | Refusal::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Identity stage: the terminal with this key fingerprint and its active physician, through the
/// connection's identity cache (a refused terminal learns nothing about routes or patients).
pub fn identify_cached(
    conn: &ConnIdentity,
    store: &Store,
    fingerprint: &str,
    now: OffsetDateTime,
) -> Result<Arc<Who>, Refusal> {
    identified(conn.resolve(store, fingerprint, now))
}

fn identified(
    r: Result<Result<Arc<Who>, IdentityRefusal>, StoreError>,
) -> Result<Arc<Who>, Refusal> {
    match r {
        Ok(Ok(who)) => Ok(who),
        Ok(Err(r)) => Err(Refusal::Identity(r)),
        Err(e) => {
            tracing::error!(error = %e, "registry read failed");
            Err(Refusal::StoreUnavailable)
        }
    }
}

/// Route and consent stages for an identified physician: the target, then the patient's
/// consent, default deny.
pub fn authorize(
    store: &Store,
    routes: &RouteTable,
    who: Arc<Who>,
    method: &http::Method,
    path_and_query: &str,
    now: OffsetDateTime,
) -> Decision {
    let target = match routes.resolve(method, path_and_query) {
        Ok(t) => t,
        Err(r) => return Decision::deny(Refusal::Route(r), Some(who), None),
    };
    let Some(patient) = &target.patient else {
        return Decision::Allow(Allowed {
            who,
            target,
            window: None,
            first_view_today: false,
        });
    };
    let today = now.to_offset(crate::ops::clock::JST).date();
    let verdict = match store.consent(patient) {
        Ok(Some(c)) => consent::evaluate(&c, today).map(|w| (w, c.last_view != Some(today))),
        Ok(None) => Err(ConsentRefusal::NoConsent),
        Err(e) => {
            tracing::error!(error = %e, "consent read failed");
            return Decision::deny(Refusal::StoreUnavailable, Some(who), Some(target));
        }
    };
    match verdict {
        Ok((window, first_view_today)) => Decision::Allow(Allowed {
            who,
            target,
            window: Some(window),
            first_view_today,
        }),
        Err(r) => Decision::deny(Refusal::Consent(r), Some(who), Some(target)),
    }
}
