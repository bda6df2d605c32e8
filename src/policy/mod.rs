//! Every refusal check of the request path, in the order a request meets them, default deny:
//!
//! 1. **framing** — absolute-form targets, `Transfer-Encoding` from a client, too many header
//!    fields, a declared body on a method that carries none (issue 11 item 2);
//! 2. **identity** — the terminal credential → registered terminal → active physician (art
//!    12.7, 4), or a site system and the physician it names (art 6.1);
//! 3. the site's **start page** for `/`, and the gateway's **own pages** under `/.seibo/`;
//! 4. **session** — signed in from this terminal, password changed (art 6.3, 13.1);
//! 5. **route and consent** — the target's patient and record category, the patient's consent
//!    and viewing window (art 8, 9) — [`crate::policy::decision::authorize`];
//! 6. **body size** — the route's limit on a declared body.
//!
//! After forwarding, one more check reads the EMR's response: [`check_response`] (downloads,
//! art 13.2). Nothing here does I/O but registry reads: it decides, the request path acts.

pub(crate) mod auth;
pub(crate) mod consent;
pub mod decision;
pub(crate) mod hashing;
pub mod identity;
pub(crate) mod own_paths;
pub mod route;
pub(crate) mod session;
pub(crate) mod signin;
pub(crate) mod signin_rate;
pub(crate) mod start;
pub(crate) mod whoami;

use std::sync::Arc;

use http::{header, Request, Response};
use time::OffsetDateTime;

use crate::egress::forward::carries_no_body;
use crate::gate::{Gate, Live};
use crate::ingress::peer::{Ingress, Peer};
use crate::pages::Body;
use crate::site::config::{Limits, Policy};
use decision::{Decision, Denied, Refusal};
use identity::{ConnIdentity, Who};
use own_paths::is_own_path;
use route::RouteError;

/// What the request path does with a request.
#[derive(Debug)]
pub enum Plan {
    /// Allowed: forward it to the EMR.
    Forward(decision::Allowed),
    /// A page of the gateway's own under `/.seibo/`, for this identified terminal.
    OwnPage(Arc<Who>),
    /// `/`: redirected to the site's start page (issue 11 item 24).
    StartPage(Arc<Who>, Response<Body>),
    /// Refused, with what was known.
    Refuse(Denied),
}

/// Audit reason of a request body on a method that carries none (issue 11 item 2).
pub const BODY_ON_BODYLESS_METHOD: &str = "body-on-bodyless-method";

/// Checks one request, top to bottom (see the module documentation). `target` is the
/// request-target as written (path and query, or the whole target when it has no path).
pub fn check<B>(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    conn: &ConnIdentity,
    req: &Request<B>,
    target: &str,
    now: OffsetDateTime,
) -> Plan {
    let refuse = |refusal, who| {
        Plan::Refuse(Denied {
            refusal,
            who,
            target: None,
        })
    };
    if let Some(r) = framing_refusal(req, &live.limits) {
        return refuse(r, None);
    }
    // The regional registry not confirmed current for longer than `max_stale_secs`: every
    // identity, session and consent read from it could be out of date (a revocation or a
    // withdrawal not yet seen), so nothing that depends on it is served (fail closed).
    if !gate.store.usable() {
        return refuse(Refusal::RegistryUnavailable, None);
    }
    let who = match identify(gate, live, peer, conn, req, now) {
        Ok(who) => who,
        Err(r) => return refuse(r, None),
    };
    if let Some(resp) = crate::policy::start::root_redirect(&live.site.home, req.method(), target) {
        return Plan::StartPage(who, resp);
    }
    if is_own_path(target) {
        return Plan::OwnPage(who);
    }
    if live.auth.password_required && peer.ingress != Ingress::Site {
        if let Err(r) = signin::check_session(gate, &who, peer, req.headers()) {
            return refuse(r, Some(who));
        }
    }
    match decision::authorize(&gate.store, &live.routes, who, req.method(), target, now) {
        Decision::Allow(a) => {
            let limit = a
                .target
                .max_body_bytes
                .unwrap_or(live.limits.max_body_bytes);
            if content_length(req.headers()).is_some_and(|n| n > limit) {
                return Plan::Refuse(Denied {
                    refusal: Refusal::BodyTooLarge,
                    who: Some(a.who),
                    target: Some(a.target),
                });
            }
            Plan::Forward(a)
        }
        Decision::Deny(d) => Plan::Refuse(d),
    }
}

/// Requests whose framing or head the gateway will not pass on, whatever their target.
///
/// HTTP/1 absolute-form (`GET http://other/...`) is refused: the check and the forward must see
/// one and the same origin-form target (HTTP/2 always carries `:authority`; it is ignored).
/// HTTP/1 `Transfer-Encoding` from a client is refused: hyper accepts `Content-Length` together
/// with `Transfer-Encoding: chunked` (dropping the length), and a viewing gateway has no need
/// for chunked uploads (browsers send a length), so no request whose framing two parsers
/// could read differently is ever forwarded. Header count is checked here for HTTP/2 (hyper
/// enforces it for HTTP/1 while parsing). A method that carries no body must not declare one:
/// an EMR that does not read it would take it for the next request (issue 11 item 2).
pub fn framing_refusal<B>(req: &Request<B>, limits: &Limits) -> Option<Refusal> {
    let http1 = req.version() < http::Version::HTTP_2;
    if http1 && req.uri().scheme().is_some() {
        return Some(Refusal::Route(RouteError::BadTarget("absolute-form")));
    }
    if http1 && req.headers().contains_key(header::TRANSFER_ENCODING) {
        return Some(Refusal::BadRequest("transfer-encoding"));
    }
    if req.headers().len() > limits.max_headers {
        return Some(Refusal::HeadersTooLarge);
    }
    if carries_no_body(req.method()) && content_length(req.headers()).is_some_and(|n| n > 0) {
        return Some(Refusal::BadRequest(BODY_ON_BODYLESS_METHOD));
    }
    None
}

/// The identity stage: a terminal through the connection's identity cache, or a site system
/// and the physician its request names (art 6.1).
fn identify<B>(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    conn: &ConnIdentity,
    req: &Request<B>,
    now: OffsetDateTime,
) -> Result<Arc<Who>, Refusal> {
    let fingerprint = peer.credential.fingerprint();
    match peer.ingress {
        Ingress::Mtls | Ingress::WireGuard => {
            decision::identify_cached(conn, &gate.store, fingerprint, now)
        }
        Ingress::Site => {
            let asserted = req
                .headers()
                .get(identity::SITE_PHYSICIAN_HEADER)
                .and_then(|v| v.to_str().ok());
            match identity::resolve_site_system(&gate.store, fingerprint, asserted, &live.site.id) {
                Ok(Ok(who)) => Ok(Arc::new(who)),
                Ok(Err(r)) => Err(Refusal::SiteSystem(r)),
                Err(e) => {
                    tracing::error!(error = %e, "registry read failed");
                    Err(Refusal::StoreUnavailable)
                }
            }
        }
    }
}

/// The check on the EMR's response: a response that would save a file is refused when
/// downloads are blocked (art 13.2: no saving of displayed records).
pub fn check_response(policy: &Policy, headers: &http::HeaderMap) -> Result<(), Refusal> {
    if policy.block_downloads && is_attachment(headers) {
        return Err(Refusal::DownloadBlocked);
    }
    Ok(())
}

/// The declared body length (hyper has already refused conflicting values).
pub fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn is_attachment(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("attachment")
        })
}

#[cfg(test)]
mod tests;
