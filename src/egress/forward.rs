//! Step 4 of the request path: forward to the web EMR in the private segment (art 12.6).
//!
//! The gateway always connects to the configured upstream, whatever the request's `Host` says,
//! and every address a name resolves to must lie in `upstream.private` (an IP literal upstream
//! is checked at config load). Incoming identity headers are stripped, the gateway's own are
//! added, hop-by-hop headers are dropped both ways, `Location` headers pointing at the
//! upstream are made relative, and every response is marked `no-store` (art 13.2.5).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ipnetwork::IpNetwork;

use crate::pages::{self, Body};
use crate::site::config::{in_networks, Upstream};

mod aliases;

/// The boxed cause of a body or client failure (hyper's and http-body's errors).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The EMR could not be reached, or the exchange with it failed.
    #[error("cannot reach the EMR")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("the EMR did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The checked target does not make a URI with the upstream's base (never expected: the
    /// target was normalised by the route table).
    #[error("bad request target for the EMR")]
    Target(#[from] http::uri::InvalidUri),
    /// The client did not send its request body within the upstream's response timeout.
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// The client's request body outgrew the route's limit while it was being forwarded.
    #[error("the request body is larger than the route allows")]
    BodyTooLarge,
    /// A request body on a method that carries none ([`carries_no_body`]).
    #[error("a request body on a method that carries none")]
    BodyNotAllowed,
    /// The client's request body failed while it was being read or forwarded: the client went
    /// away mid-body (issue 11 item 9). Not the EMR's fault.
    #[error("the client's request body ended early")]
    ClientBody(#[source] Cause),
}

/// Methods whose requests carry no body (RFC 9110: GET, HEAD, DELETE, OPTIONS and TRACE
/// content has no defined semantics, CONNECT's none at all). An EMR that does not read such a
/// body would take it for the next request on the pooled connection: a declared body is
/// refused before routing (`service`), an HTTP/2 body without a length here, and none is
/// ever forwarded.
pub fn carries_no_body(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::DELETE
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::CONNECT
    )
}

/// Resolves the upstream's name and keeps only addresses inside the private segment.
#[derive(Clone, Debug)]
pub struct PrivateResolver {
    private: Arc<Vec<IpNetwork>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(String);

impl tower_service::Service<Name> for PrivateResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let private = self.private.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError(format!("cannot resolve {host}: {e}")))?;
            let (inside, outside): (Vec<SocketAddr>, Vec<SocketAddr>) =
                addrs.partition(|a| in_networks(&private, a.ip()));
            for a in &outside {
                tracing::warn!(host = %host, address = %a.ip(), "upstream address outside the private segment ignored (art 12.6)");
            }
            if inside.is_empty() {
                return Err(ResolveError(format!(
                    "{host} resolves to no address inside upstream.private"
                )));
            }
            Ok(inside.into_iter())
        })
    }
}

/// A pooled HTTP/1.1 client to the one upstream EMR.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<HttpConnector<PrivateResolver>, Body>,
    upstream: Arc<Upstream>,
    base: Arc<str>,
    /// Ask the EMR for uncompressed bodies (so the print guard can be appended to HTML).
    identity_encoding: bool,
}

/// Identity headers for the EMR.
#[derive(Debug, Default)]
pub struct Forwarded<'a> {
    pub site: &'a str,
    pub physician: &'a str,
    pub terminal: &'a str,
    pub patient: Option<&'a str>,
    pub category: Option<&'a str>,
    pub records_from: Option<String>,
    pub access_until: Option<String>,
    pub client_ip: String,
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    h.remove(header::PROXY_AUTHORIZATION);
}

/// The gateway's session cookie is the gateway's: the EMR never sees it.
fn strip_session_cookie(h: &mut HeaderMap) {
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(crate::policy::session::COOKIE))
        .map(str::to_string)
        .collect();
    h.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
}

fn put(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

impl Forwarder {
    pub fn new(upstream: &Upstream, identity_encoding: bool) -> Forwarder {
        let mut http = HttpConnector::new_with_resolver(PrivateResolver {
            private: Arc::new(upstream.private.clone()),
        });
        http.set_connect_timeout(Some(upstream.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(upstream.pool_idle_per_host)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(http);
        Forwarder {
            client,
            base: Arc::from(upstream.base_url()),
            upstream: Arc::new(upstream.clone()),
            identity_encoding,
        }
    }

    /// Sends the checked request (its normalised `path_and_query`) to the EMR and returns the
    /// EMR's response with its headers made safe for the client.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        path_and_query: &str,
        id: &Forwarded<'_>,
        max_body: u64,
    ) -> Result<Response<Incoming>, ForwardError> {
        *req.uri_mut() = format!("{}{}", self.base, path_and_query).parse::<Uri>()?;
        *req.version_mut() = http::Version::HTTP_11;
        self.request_headers(req.headers_mut(), id);
        let timeout = self.upstream.response_timeout;
        let req = checked_body(req, max_body, timeout).await?;
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => return Err(ForwardError::Timeout(timeout)),
            Ok(Err(e)) if is_length_limit(&e) => return Err(ForwardError::BodyTooLarge),
            Ok(Err(e)) if is_client_body(&e) => return Err(ForwardError::ClientBody(Box::new(e))),
            Ok(Err(e)) => return Err(ForwardError::Connect(e)),
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        aliases::strip_fingerprint(&mut parts.headers);
        self.rewrite_location(&mut parts.headers);
        pages::protect(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    /// The request's headers for the EMR: the client's hop-by-hop, identity-like and session
    /// headers removed, the upstream's `Host`, and the gateway's identity headers.
    fn request_headers(&self, h: &mut HeaderMap, id: &Forwarded<'_>) {
        strip_hop_by_hop(h);
        self.upstream.strip_headers.strip(h);
        strip_session_cookie(h);
        if self.identity_encoding {
            h.remove(header::ACCEPT_ENCODING);
        }
        if let Ok(v) = HeaderValue::from_str(self.upstream.authority.as_str()) {
            h.insert(header::HOST, v);
        }
        put(h, "x-seibo-site", id.site);
        put(h, "x-seibo-physician", id.physician);
        put(h, "x-seibo-terminal", id.terminal);
        if let Some(p) = id.patient {
            put(h, "x-seibo-patient", p);
        }
        if let Some(c) = id.category {
            put(h, "x-seibo-category", c);
        }
        if let Some(d) = &id.records_from {
            put(h, "x-seibo-records-from", d);
        }
        if let Some(d) = &id.access_until {
            put(h, "x-seibo-access-until", d);
        }
        put(h, "x-forwarded-for", &id.client_ip);
        put(h, "x-forwarded-proto", "https");
    }

    /// `Location: http://emr.internal/x` → `/x`, so the browser stays on the gateway.
    fn rewrite_location(&self, h: &mut HeaderMap) {
        let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let Some(rest) = loc.strip_prefix(&*self.base) else {
            return;
        };
        let rel = if rest.is_empty() {
            "/".to_string()
        } else if rest.starts_with('/') || rest.starts_with('?') {
            if rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_string()
            }
        } else {
            // `http://emr.internal:8080` matched as a prefix of `http://emr.internal:80801`.
            return;
        };
        if let Ok(v) = HeaderValue::from_str(&rel) {
            h.insert(header::LOCATION, v);
        }
    }
}

/// The request's body as it may reach the EMR: none at all on a method that carries none
/// (an HTTP/2 stream left open must be empty); a declared length enforced by hyper with the
/// route's limit as a backstop; a body without a length (HTTP/2 streams it) read up to the
/// limit first, so that one over the limit is refused before anything reaches the EMR.
async fn checked_body(
    req: Request<Incoming>,
    max_body: u64,
    timeout: std::time::Duration,
) -> Result<Request<Body>, ForwardError> {
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    if carries_no_body(req.method()) {
        let (mut parts, body) = req.into_parts();
        if !http_body::Body::is_end_stream(&body) {
            match tokio::time::timeout(timeout, Limited::new(body, 0).collect()).await {
                Err(_) => return Err(ForwardError::BodyTimeout),
                Ok(Err(e)) if e.is::<LengthLimitError>() => {
                    return Err(ForwardError::BodyNotAllowed)
                }
                Ok(Err(e)) => return Err(ForwardError::ClientBody(e)),
                Ok(Ok(_)) => {}
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok(Request::from_parts(parts, pages::full(bytes::Bytes::new())));
    }
    if req.headers().contains_key(header::CONTENT_LENGTH)
        || http_body::Body::is_end_stream(req.body())
    {
        return Ok(req.map(|b| Limited::new(b, limit).boxed()));
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => return Err(ForwardError::BodyTimeout),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(ForwardError::BodyTooLarge),
        Ok(Err(e)) => return Err(ForwardError::ClientBody(e)),
        Ok(Ok(c)) => c.to_bytes(),
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(Request::from_parts(parts, pages::full(bytes)))
}

/// True when a client error was caused by the body we gave it, the client's request body
/// (hyper: an error "from user's Body stream" whose cause is the incoming body's own error).
fn is_client_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let Some(err) = cur else { return false };
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            // A user error with a cause: the cause came out of our body, the client's.
            if h.is_user() && std::error::Error::source(h).is_some() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// True when a client error was caused by the request body's length limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let Some(err) = cur else { return false };
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
