//! `[site] home`, the start page: where `/` and sign-in lead (issue 11 item 24). It is
//! validated when the config is loaded, so a wrong one is a config error naming `site.home`,
//! never a redirect into a refusal:
//!
//! * it is an EMR path the route table routes for `GET`, written exactly as the gateway
//!   forwards it (normalised: no `..`, no `//`, canonical escapes), and it names **no
//!   patient** (a start page is the same for every physician; a patient's page is reached
//!   from it, each view checked against consent);
//! * or the gateway's "who am I" page, [`WHOAMI_PATH`].
//!
//! Default: the EMR's root `/` when the route table routes it, else [`WHOAMI_PATH`]. The
//! redirect to it is `crate::policy::start`'s; this needs only the route table.

use http::Method;

use crate::policy::route::own::{is_own_path, WHOAMI_PATH};
use crate::policy::route::RouteTable;

/// Why `[site] home` cannot be the start page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HomeError {
    #[error(
        "site.home: {0:?} must be a path on this gateway starting with '/' (e.g. \"/emr/menu\")"
    )]
    NotAPath(String),
    #[error("site.home: {0:?} is a page of the gateway's own; only {WHOAMI_PATH:?} can be the start page")]
    OwnPage(String),
    #[error("site.home: {home:?} is not an EMR page the route table allows for GET ({reason}); add a [[route]] for it or choose another page")]
    NotRouted { home: String, reason: &'static str },
    #[error("site.home: {0:?} names a patient; the start page must be a page without patient data (a no_patient route)")]
    NamesPatient(String),
    #[error("site.home: {home:?} is forwarded as {canonical:?}; write that form")]
    NotCanonical { home: String, canonical: String },
}

/// The validated start page for `configured` (`[site] home`), or the default.
pub fn resolve_home(routes: &RouteTable, configured: Option<&str>) -> Result<String, HomeError> {
    let Some(home) = configured else {
        return Ok(if root_is_routed(routes) {
            "/".to_string()
        } else {
            WHOAMI_PATH.to_string()
        });
    };
    if !home.starts_with('/') || home.starts_with("//") {
        return Err(HomeError::NotAPath(home.to_string()));
    }
    if home == WHOAMI_PATH {
        return Ok(home.to_string());
    }
    if is_own_path(home) {
        return Err(HomeError::OwnPage(home.to_string()));
    }
    let target = routes
        .resolve(&Method::GET, home)
        .map_err(|e| HomeError::NotRouted {
            home: home.to_string(),
            reason: e.reason(),
        })?;
    if target.patient.is_some() {
        return Err(HomeError::NamesPatient(home.to_string()));
    }
    let canonical = target.path_and_query();
    if canonical != home {
        return Err(HomeError::NotCanonical {
            home: home.to_string(),
            canonical,
        });
    }
    Ok(canonical)
}

/// True when the route table forwards `GET /` to the EMR, with no patient.
fn root_is_routed(routes: &RouteTable) -> bool {
    routes
        .resolve(&Method::GET, "/")
        .is_ok_and(|t| t.patient.is_none())
}
