//! The gateway's own pages under `/.seibo/` (sign-in, password change, sign-out, "who am I"):
//! a reserved prefix that is never routed to the EMR. Here, beside the route table, so that
//! config (the start page) and the request path name them from one place.

pub const PREFIX: &str = "/.seibo/";
pub const LOGIN_PATH: &str = "/.seibo/login";
pub const PASSWORD_PATH: &str = "/.seibo/password";
pub const LOGOUT_PATH: &str = "/.seibo/logout";
pub const WHOAMI_PATH: &str = "/.seibo/whoami";

/// True for the reserved prefix (never forwarded to the EMR).
pub fn is_own_path(raw_target: &str) -> bool {
    raw_target == "/.seibo" || raw_target.starts_with(PREFIX) || raw_target.starts_with("/.seibo?")
}
