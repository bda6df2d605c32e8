//! Response headers that tell a client what the EMR runs on, stripped here. The request
//! headers a client must never hand the EMR (issue 11 item 3) are parsed with the config
//! ([`crate::site::config::StripList`], `[upstream] strip_headers`) and applied by the forwarder.

use http::HeaderMap;

/// Response headers that advertise the EMR's software: never passed to the client.
pub const EMR_FINGERPRINT_HEADERS: &[&str] = &[
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-sourcefiles",
];

/// Removes the EMR's software banner headers from a response.
pub fn strip_fingerprint(h: &mut HeaderMap) {
    for n in EMR_FINGERPRINT_HEADERS {
        h.remove(*n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emr_fingerprint_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "server",
            http::HeaderValue::from_static("Apache/2.4.1 (EMR)"),
        );
        h.insert("x-powered-by", http::HeaderValue::from_static("PHP/5.6"));
        h.insert("content-type", http::HeaderValue::from_static("text/html"));
        strip_fingerprint(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
