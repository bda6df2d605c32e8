//! The gateway's own pages under `/.seibo/` (sign-in, password change, sign-out, "who am I"):
//! their paths, the sign-in URL that returns to a page, and what a page of the gateway's own
//! tells the audit. A leaf of the request path: the pages themselves are in [`crate::signin`]
//! and [`crate::whoami`].

use http::Response;

use crate::decision::Verdict;
use crate::pages::Body;

pub const PREFIX: &str = "/.seibo/";
pub const LOGIN_PATH: &str = "/.seibo/login";
pub const PASSWORD_PATH: &str = "/.seibo/password";
pub const LOGOUT_PATH: &str = "/.seibo/logout";
pub const WHOAMI_PATH: &str = "/.seibo/whoami";

/// A page of the gateway's own, with what the audit records of it.
pub struct OwnPage {
    pub verdict: Verdict,
    pub reason: &'static str,
    pub response: Response<Body>,
}

/// True for the reserved prefix (never forwarded to the EMR).
pub fn is_own_path(raw_target: &str) -> bool {
    raw_target == "/.seibo" || raw_target.starts_with(PREFIX) || raw_target.starts_with("/.seibo?")
}

/// The sign-in page that returns to `next` afterwards.
pub fn login_url(next: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    format!("{LOGIN_PATH}?{q}")
}
