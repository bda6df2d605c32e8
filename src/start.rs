//! The site's start page (`[site] home`): where `/` leads, and where sign-in returns when no
//! page was asked for (issue 11 item 24). A physician is told to open the gateway's address
//! (`https://10.77.0.1/` through WireGuard); that must land somewhere useful, not on the
//! "outside the viewing range" page.
//!
//! The start page is validated when the config is loaded, so a wrong one is a config error
//! (naming `site.home`), never a redirect into a refusal:
//!
//! * it is an EMR path the route table routes for `GET`, written exactly as the gateway
//!   forwards it (normalised: no `..`, no `//`, canonical escapes), and it names **no
//!   patient** (a start page is the same for every physician; a patient's page is reached
//!   from it, each view checked against consent);
//! * or the gateway's "who am I" page, [`WHOAMI_PATH`].
//!
//! Default: the EMR's root `/` when the route table routes it, else [`WHOAMI_PATH`].

use http::{Method, Response};

use crate::own_paths::{is_own_path, WHOAMI_PATH};
use crate::pages::{self, Body};
use crate::route::{self, RouteTable};

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

/// True for a target whose path is the root, however written (`/`, `//`, `/./`, `/?x`).
pub fn is_root(raw_target: &str) -> bool {
    let path = raw_target.split('?').next().unwrap_or(raw_target);
    route::normalise_path(path).is_ok_and(|segments| segments.is_empty())
}

/// `GET /` or `HEAD /` when the start page is elsewhere: 303 to the start page. `None` when the
/// request is for something else (or the start page is the EMR's root, which is then routed).
pub fn root_redirect(home: &str, method: &Method, raw_target: &str) -> Option<Response<Body>> {
    if home == "/" || !(method == Method::GET || method == Method::HEAD) || !is_root(raw_target) {
        return None;
    }
    Some(pages::redirect(home))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteSpec;

    fn table(specs: &[(&str, bool)]) -> RouteTable {
        let specs: Vec<RouteSpec> = specs
            .iter()
            .map(|(path, no_patient)| RouteSpec {
                path: path.to_string(),
                category: None,
                patient_query: None,
                no_patient: *no_patient,
                methods: None,
                max_body_bytes: None,
            })
            .collect();
        RouteTable::new(&specs).expect("valid routes")
    }

    fn emr() -> RouteTable {
        table(&[
            ("/patients/{patient}/{category}/**", false),
            ("/portal/**", true),
        ])
    }

    #[test]
    fn default_is_the_emr_root_when_routed_else_whoami() {
        assert_eq!(resolve_home(&emr(), None).as_deref(), Ok(WHOAMI_PATH));
        let with_root = table(&[("/patients/{patient}/{category}/**", false), ("/", true)]);
        assert_eq!(resolve_home(&with_root, None).as_deref(), Ok("/"));
    }

    #[test]
    fn a_configured_home_must_be_a_routed_page_without_patient() {
        let t = emr();
        assert_eq!(
            resolve_home(&t, Some("/portal/menu")).as_deref(),
            Ok("/portal/menu")
        );
        assert_eq!(
            resolve_home(&t, Some("/portal/menu?tab=today")).as_deref(),
            Ok("/portal/menu?tab=today")
        );
        assert_eq!(
            resolve_home(&t, Some(WHOAMI_PATH)).as_deref(),
            Ok(WHOAMI_PATH)
        );
        for (bad, want) in [
            ("portal/menu", "NotAPath"),
            ("https://evil.example/", "NotAPath"),
            ("//evil.example/portal", "NotAPath"),
            ("/.seibo/logout", "OwnPage"),
            ("/.seibo/login", "OwnPage"),
            ("/admin", "NotRouted"),
            ("/", "NotRouted"),
            ("/patients/P001/basic", "NamesPatient"),
            ("/portal/../patients/P001/basic", "NamesPatient"),
            ("/portal/./menu", "NotCanonical"),
            ("/portal//menu", "NotCanonical"),
            ("/portal/%6Denu", "NotCanonical"),
            ("/portal/a%2Fb", "NotRouted"),
        ] {
            let got = resolve_home(&t, Some(bad));
            let err = got.expect_err(bad);
            assert!(
                format!("{err:?}").starts_with(want),
                "{bad}: {err:?} is not {want}"
            );
            assert!(err.to_string().starts_with("site.home: "), "{err}");
        }
    }

    #[test]
    fn only_get_and_head_of_the_root_are_redirected() {
        let home = "/portal/menu";
        for root in ["/", "/?x=1", "//", "/./", "/%2e/"] {
            let r = root_redirect(home, &Method::GET, root).expect(root);
            assert_eq!(r.status(), http::StatusCode::SEE_OTHER);
            assert_eq!(
                r.headers()
                    .get(http::header::LOCATION)
                    .map(|v| v.as_bytes()),
                Some(home.as_bytes())
            );
        }
        assert!(root_redirect(home, &Method::HEAD, "/").is_some());
        assert!(root_redirect(home, &Method::POST, "/").is_none());
        assert!(root_redirect(home, &Method::GET, "/portal").is_none());
        assert!(root_redirect(home, &Method::GET, "/..").is_none());
        // The EMR's root is the start page: `/` is routed like any page.
        assert!(root_redirect("/", &Method::GET, "/").is_none());
    }
}
