//! One request's context, carried through the stages of the request path: who sent it (the
//! connection's [`Peer`]), the configuration it is served with, what it asked for, and when.

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request};
use time::OffsetDateTime;

use crate::gate::{Gate, Live};
use crate::ingress::peer::Peer;

/// Longest request-target the audit records as received (bytes, before the ellipsis).
const MAX_RECEIVED: usize = 2048;

/// The request being served: fixed when it arrives, read by every stage.
#[derive(Debug)]
pub struct Exchange {
    pub peer: Arc<Peer>,
    /// The configuration this request is served with (a reload in between does not change it).
    pub live: Arc<Live>,
    /// When the request arrived (durations in the audit and the metrics).
    pub started: Instant,
    /// The gateway clock's time at arrival (consent windows, sessions, the audit).
    pub now: OffsetDateTime,
    pub method: Method,
    /// The request-target as written: path and query, or the whole target when it has no path
    /// (an authority-form `CONNECT host:port` is routed, and refused, as written — never as `/`).
    pub target: String,
    /// The request-target as received, and the HTTP version: what the audit names when the
    /// target is refused before routing ([`Exchange::received`], issue 11 item 10).
    uri: http::Uri,
    version: http::Version,
    /// The client asks for a page (a browser), not data.
    pub wants_html: bool,
}

impl Exchange {
    pub fn new<B>(gate: &Gate, peer: Arc<Peer>, req: &Request<B>) -> Exchange {
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| req.uri().to_string());
        Exchange {
            peer,
            live: gate.live(),
            started: Instant::now(),
            now: gate.clock.now(),
            method: req.method().clone(),
            target,
            uri: req.uri().clone(),
            version: req.version(),
            wants_html: accepts_html(req.headers()),
        }
    }
}

impl Exchange {
    /// The request-target as the client sent it, for the audit of a request refused before
    /// routing (built only then: an allowed request is audited with its routed target).
    pub fn received(&self) -> String {
        received_target(self.version, &self.uri)
    }
}

/// True when the client asks for a page (a browser), not data.
fn accepts_html(h: &http::HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The request-target as the client sent it, for the audit of a request refused before
/// routing: HTTP/1's absolute-form and authority-form whole (`path_and_query` would make them
/// `/`), HTTP/2's `:path`; bytes outside printable ASCII percent-encoded; capped in length.
fn received_target(version: http::Version, uri: &http::Uri) -> String {
    let text = match (version < http::Version::HTTP_2, uri.path_and_query()) {
        (false, Some(pq)) => pq.as_str().to_string(),
        _ => uri.to_string(),
    };
    const ESCAPE: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'\\');
    truncate(
        &percent_encoding::utf8_percent_encode(&text, ESCAPE).to_string(),
        MAX_RECEIVED,
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_targets_are_escaped_and_capped() {
        let uri: http::Uri = "http://evil.example/a%20b".parse().expect("uri");
        assert_eq!(
            received_target(http::Version::HTTP_11, &uri),
            "http://evil.example/a%20b"
        );
        let uri: http::Uri = "evil.example:443".parse().expect("authority");
        assert_eq!(
            received_target(http::Version::HTTP_11, &uri),
            "evil.example:443"
        );
        let long = format!("/{}", "a".repeat(5000));
        let uri: http::Uri = long.parse().expect("long");
        let got = received_target(http::Version::HTTP_2, &uri);
        assert_eq!(got.len(), MAX_RECEIVED + "…".len());
        assert!(got.ends_with('…'));
    }
}
