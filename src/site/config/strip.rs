//! Request headers a client must never hand the EMR (issue 11 item 3): the strip list, its
//! defaults and `[upstream] strip_headers`, parsed here with the config (the forwarder applies
//! it, and strips the response headers that tell a client what the EMR runs on).
//!
//! A CGI, WSGI or Rack back end sees `X_Seibo_Patient` and `X-Seibo-Patient` as one variable
//! (`HTTP_X_SEIBO_PATIENT`), and many frameworks trust headers that a proxy in front is supposed
//! to set (`X-Original-URL`, `X-HTTP-Method-Override`, `Remote-User`, `X-SSL-Client-*`...). So
//! every request header is compared in its **canonical form** — lower case, `_` and `.` read as
//! `-` — against a list of names and `prefix-*` patterns: the gateway's own headers, and the
//! headers that EMRs, web servers, frameworks and authenticating proxies are known to trust
//! for the client's identity, address, certificate, URL or method. A match is dropped before
//! the gateway adds its own. A site adds its EMR's own names with `[upstream] strip_headers`.
//!
//! A header whose name only *becomes* a framing or routing header once `_` or `.` is read as
//! `-` (`Content_Length`, `Transfer_Encoding`, `Host_`…) is dropped too: the real ones are the
//! gateway's to set, and a back end that merges the alias could frame or route differently.

use http::{HeaderMap, HeaderName};

/// Headers (canonical names) stripped from every request. `*` ends a prefix pattern.
///
/// Sources: the gateway's own (`x-seibo-*`, `x-forwarded-*`); RFC 7239 `forwarded`; client
/// address headers of common proxies and CDNs (nginx `x-real-ip`, Akamai `true-client-ip`,
/// Cloudflare `cf-connecting-ip`, Fastly, `x-cluster-client-ip`, `client-ip`); URL and method
/// overrides trusted by IIS/ASP.NET, Symfony, Laravel, Rails, Express and Envoy
/// (`x-original-url`, `x-rewrite-url`, `x-original-*`, `x-http-method*`, `x-method-override`,
/// `x-envoy-*`, `x-host`); identity headers of Apache/CGI (`remote-*`), auth proxies
/// (oauth2-proxy `x-auth-request-*`, `x-forwarded-user`; Grafana-style `x-webauth-*`;
/// `x-remote-*`, `x-authenticated-*`, `x-user*`, `auth-user`, `x-email`; Azure
/// `x-ms-client-principal*`; Google IAP `x-goog-authenticated-user-*`; AWS ALB `x-amzn-oidc-*`,
/// `x-amzn-mtls-*`; mod_auth_openidc `oidc-*`) and client-certificate headers (`x-ssl-*`,
/// `ssl-*` as Apache's `SSL_CLIENT_*`, `x-client-cert*`, `x-client-dn`, `x-client-verify`,
/// IIS ARR `x-arr-clientcert`); scheme headers (`front-end-https`, `x-url-scheme`,
/// `x-scheme`); and `proxy` (httpoxy: CGI turns it into `HTTP_PROXY`).
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "x-seibo-*",
    "x-forwarded",
    "x-forwarded-*",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-*",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-proxyuser-ip",
    "client-ip",
    "x-host",
    "x-original-*",
    "x-rewrite-url",
    "x-http-method",
    "x-http-method-*",
    "x-method-override",
    "x-envoy-*",
    "remote-*",
    "x-remote-*",
    "auth-user",
    "x-auth-*",
    "x-authenticated-*",
    "x-user*",
    "x-webauth-*",
    "x-email",
    "x-ms-client-principal*",
    "x-goog-authenticated-user-*",
    "x-amzn-oidc-*",
    "x-amzn-mtls-*",
    "oidc-*",
    "x-ssl-*",
    "ssl-*",
    "x-client-cert*",
    "x-client-dn",
    "x-client-s-dn",
    "x-client-i-dn",
    "x-client-verify",
    "x-arr-clientcert",
    "x-arr-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-scheme",
    "proxy",
];

/// Headers the gateway frames or routes by: an alias of one (a name that only matches after
/// `_`/`.` → `-`) is dropped; the real header is left to the framing and forwarding code.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "cookie",
    "authorization",
    "proxy-authorization",
];

/// A `[upstream] strip_headers` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripHeaderError {
    #[error("{entry:?} must be a header name of A-Z a-z 0-9 - _ . (optionally ending in '*' for a prefix, with at least 2 characters before it)")]
    Bad { entry: String },
}

/// `X_Seibo.Patient` → `x-seibo-patient`.
pub fn canonical_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `name` (any case, `_` and `.` read as `-`) equals the canonical `canonical`.
fn canonical_eq(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&a, &b)| {
            let a = match a {
                b'_' | b'.' => b'-',
                a => a.to_ascii_lowercase(),
            };
            a == b
        })
}

/// The validated strip list: exact canonical names and canonical prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripList {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Default for StripList {
    fn default() -> StripList {
        let mut l = StripList {
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        for e in DEFAULT_STRIP_HEADERS {
            l.push(e);
        }
        l
    }
}

impl StripList {
    /// The defaults plus a site's own entries (names or `prefix*` patterns, any case, `_`
    /// read as `-`); every bad entry is reported with its index.
    pub fn with_extra(entries: &[String]) -> Result<StripList, Vec<(usize, StripHeaderError)>> {
        let mut l = StripList::default();
        let mut errors = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let stem = e.strip_suffix('*').unwrap_or(e);
            let ok = !stem.is_empty()
                && stem.len() <= 128
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && (stem.len() >= 2 || !e.ends_with('*'));
            if ok {
                l.push(e);
            } else {
                errors.push((i, StripHeaderError::Bad { entry: e.clone() }));
            }
        }
        if errors.is_empty() {
            Ok(l)
        } else {
            Err(errors)
        }
    }

    fn push(&mut self, entry: &str) {
        match entry.strip_suffix('*') {
            Some(p) => self.prefixes.push(canonical_name(p)),
            None => self.exact.push(canonical_name(entry)),
        }
    }

    /// True when a client's header `name` must not reach the EMR. Compared in canonical form
    /// byte by byte, without building the canonical name: this runs for every header of every
    /// forwarded request.
    pub fn matches(&self, name: &str) -> bool {
        let n = name.as_bytes();
        self.exact.iter().any(|e| canonical_eq(n, e.as_bytes()))
            || self
                .prefixes
                .iter()
                .any(|p| n.len() >= p.len() && canonical_eq(&n[..p.len()], p.as_bytes()))
            // A name that becomes a framing header only by reading `_` or `.` as `-`.
            || (n.iter().any(|b| matches!(b, b'_' | b'.'))
                && FRAMING_HEADERS.iter().any(|f| canonical_eq(n, f.as_bytes())))
    }

    /// Removes every matching header.
    pub fn strip(&self, h: &mut HeaderMap) {
        let drop: Vec<HeaderName> = h
            .keys()
            .filter(|k| self.matches(k.as_str()))
            .cloned()
            .collect();
        for k in drop {
            h.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Art 12.7 (issue 11 item 3): every alias of an identity, address, certificate, URL or
    /// method header is dropped, whatever its case or separator; ordinary headers stay.
    #[test]
    fn art_12_7_aliases_of_trusted_headers_are_stripped() {
        let l = StripList::default();
        for name in [
            "x-seibo-patient",
            "X_Seibo_Patient",
            "x.seibo.physician",
            "X_SEIBO_SITE_PHYSICIAN",
            "x_forwarded_for",
            "X-Forwarded-Host",
            "x_forwarded",
            "Forwarded",
            "X-Original-URL",
            "x_original_url",
            "X-Original-URI",
            "X-Original-Method",
            "X-Rewrite-URL",
            "X-HTTP-Method-Override",
            "x_http_method",
            "X-Method-Override",
            "Remote-User",
            "REMOTE_USER",
            "Remote-Addr",
            "X-Remote-User",
            "True-Client-IP",
            "CF-Connecting-IP",
            "X-Client-IP",
            "X-Real-IP",
            "X_Real_IP",
            "X-SSL-Client-Cert",
            "X-SSL-Client-S-DN",
            "SSL_CLIENT_S_DN",
            "X-Client-Cert",
            "X-Client-Certificate",
            "X-Client-Verify",
            "X-Auth-Request-User",
            "X-Authenticated-User",
            "X-User",
            "X-User-Id",
            "X-Username",
            "Auth-User",
            "X-WebAuth-User",
            "X-MS-CLIENT-PRINCIPAL-NAME",
            "X-Goog-Authenticated-User-Email",
            "X-Amzn-Oidc-Identity",
            "OIDC_CLAIM_sub",
            "X-Envoy-Original-Path",
            "Proxy",
            "Content_Length",
            "Transfer_Encoding",
            "x.forwarded.for",
        ] {
            assert!(l.matches(name), "{name} must be stripped");
        }
        for name in [
            "accept",
            "accept-language",
            "content-length",
            "content-type",
            "transfer-encoding",
            "cookie",
            "authorization",
            "user-agent",
            "x-requested-with",
            "x-csrf-token",
            "x-authorization",
            "x-client-version",
            "referer",
            "if-none-match",
        ] {
            assert!(!l.matches(name), "{name} must be kept");
        }
    }

    /// `[upstream] strip_headers`: names and `prefix*` patterns, validated.
    #[test]
    fn art_12_7_site_strip_headers_extend_the_defaults() {
        let l = StripList::with_extra(&["X-EMR-User".into(), "x_emr_ctx_*".into()])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(l.matches("x-emr-user"));
        assert!(l.matches("X_EMR_USER"));
        assert!(l.matches("x-emr-ctx-patient"));
        assert!(l.matches("x-seibo-patient"), "defaults stay");
        assert!(!l.matches("x-emr-theme"));
        let bad: Vec<String> = vec![
            "*".into(),
            "x*".into(),
            "".into(),
            "x emr".into(),
            "x-*-y".into(),
            "ok".into(),
        ];
        let errs = StripList::with_extra(&bad).err().unwrap_or_default();
        let idx: Vec<usize> = errs.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 4], "{errs:?}");
    }
}
