//! The console's pages: minijinja templates embedded in the binary (`templates/`, HTML
//! auto-escaped), the headers every console response carries (nothing cached, no framing, no
//! script, forms only to the console itself), and the error page — Japanese, then English —
//! that every bad input ends on (never a stack trace).

use http::{header, HeaderValue, Response, StatusCode};
use minijinja::{context, Environment, Value};

use crate::pages::{self, Body};

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("error.html", include_str!("templates/error.html")),
    ("login.html", include_str!("templates/login.html")),
    ("password.html", include_str!("templates/password.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("done.html", include_str!("templates/done.html")),
    ("issued.html", include_str!("templates/issued.html")),
    ("today.html", include_str!("templates/today.html")),
    ("physicians.html", include_str!("templates/physicians.html")),
    ("terminals.html", include_str!("templates/terminals.html")),
    ("consents.html", include_str!("templates/consents.html")),
    ("views.html", include_str!("templates/views.html")),
    ("usage.html", include_str!("templates/usage.html")),
    ("staff.html", include_str!("templates/staff.html")),
];

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary and parsed by a unit test: a failure here
            // is a build defect, logged; the page then renders as the plain fallback.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "office: template does not parse");
            }
        }
        Templates { env }
    }

    /// `name` rendered with `ctx`, as a response with `status`.
    pub fn page(&self, status: StatusCode, name: &str, ctx: Value) -> Response<Body> {
        let html = self
            .env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| {
                tracing::error!(template = name, error = %e, "office: page could not be rendered");
                "<!doctype html><meta charset=utf-8><h1>表示できませんでした / The page could not be shown</h1><p>地域連携室の管理者に連絡してください。Please tell the office's administrator.</p>".to_string()
            });
        respond(status, "text/html; charset=utf-8", html.into_bytes())
    }

    /// The error page: what happened, Japanese then English, and the status.
    #[allow(clippy::too_many_arguments)]
    pub fn error(
        &self,
        base: Value,
        status: StatusCode,
        title: (&str, &str),
        text: (&str, &str),
        reason: &str,
        back: &str,
    ) -> Response<Body> {
        self.page(
            status,
            "error.html",
            context! {
                ..base,
                ..context! {
                    title_ja => title.0, title_en => title.1,
                    text_ja => text.0, text_en => text.1,
                    status => status.as_u16(), reason => reason, back => back,
                }
            },
        )
    }
}

/// A response with the console's headers.
pub fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(pages::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    pages::protect(h);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// A redirect (303) to a console path.
pub fn redirect(location: &str) -> Response<Body> {
    let mut r = respond(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        Vec::new(),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A file download (`Content-Disposition: attachment`), still never cached.
pub fn download(content_type: &'static str, filename: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = respond(StatusCode::OK, content_type, body);
    let safe: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Adds a `Set-Cookie`.
pub fn with_cookie(mut r: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_escapes_html() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let html = env
            .get_template("error.html")
            .and_then(|t| {
                t.render(context! {
                    site => context! { id => "s", name => "<b>site</b>" },
                    title_ja => "<i>", text_ja => "<script>x</script>",
                })
            })
            .unwrap();
        assert!(
            html.contains("&lt;script&gt;x&lt;&#x2f;script&gt;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<b>site</b>"),
            "{html}"
        );
        let t = Templates::new();
        let r = t.error(
            context! { site => context!{ id => "s", name => "<b>site</b>" } },
            StatusCode::BAD_REQUEST,
            ("題", "Title"),
            ("<script>x</script>", "en"),
            "r",
            "/office/",
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "no-store, no-cache, must-revalidate, private"
        );
    }
}
