//! The gateway's own pages under `/.seibo/` (sign-in, password change, sign-out, "who am I"):
//! their paths, the sign-in URL that returns to a page, and what a page of the gateway's own
//! tells the audit (the paths themselves live beside the route table, [`crate::policy::route::own`], so
//! that the config can name them). The pages are in [`crate::policy::signin`] and [`crate::policy::whoami`].

use http::Response;

use crate::pages::Body;
use crate::policy::decision::Verdict;

pub use crate::policy::route::own::{
    is_own_path, LOGIN_PATH, LOGOUT_PATH, PASSWORD_PATH, WHOAMI_PATH,
};

/// A page of the gateway's own, with what the audit records of it.
pub struct OwnPage {
    pub verdict: Verdict,
    pub reason: &'static str,
    pub response: Response<Body>,
}

/// The sign-in page that returns to `next` afterwards.
pub fn login_url(next: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    format!("{LOGIN_PATH}?{q}")
}
