//! The site's start page (`[site] home`): where `/` leads, and where sign-in returns when no
//! page was asked for (issue 11 item 24). A physician is told to open the gateway's address
//! (`https://10.77.0.1/` through WireGuard); that must land somewhere useful, not on the
//! "outside the viewing range" page.
//!
//! The start page is validated when the config is loaded ([`crate::site::config::resolve_home`]), so a
//! wrong one is a config error (naming `site.home`), never a redirect into a refusal:
//!
//! * it is an EMR path the route table routes for `GET`, written exactly as the gateway
//!   forwards it (normalised: no `..`, no `//`, canonical escapes), and it names **no
//!   patient** (a start page is the same for every physician; a patient's page is reached
//!   from it, each view checked against consent);
//! * or the gateway's "who am I" page, `/.seibo/whoami`.
//!
//! Default: the EMR's root `/` when the route table routes it, else `/.seibo/whoami`.

use http::{Method, Response};

use crate::pages::{self, Body};
use crate::policy::route;

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
