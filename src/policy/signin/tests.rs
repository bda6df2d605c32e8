use super::*;

#[test]
fn next_must_stay_on_the_gateway() {
    let home = "/portal/menu";
    assert_eq!(
        safe_next(Some("/patients/P1/labs?x=1"), home),
        "/patients/P1/labs?x=1"
    );
    assert_eq!(safe_next(Some(WHOAMI_PATH), home), WHOAMI_PATH);
    for bad in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil",
        "/.seibo/login",
        "/.seibo/logout",
        "/.seibo/whoami?x=1",
        "/\u{85}",
        "x",
    ] {
        assert_eq!(safe_next(Some(bad), home), home, "{bad}");
    }
    assert_eq!(safe_next(None, home), home);
}

/// A real browser posts the sign-in form with `Origin: null` (the page is
/// `Referrer-Policy: no-referrer`) and `Sec-Fetch-Site: same-origin`.
#[test]
fn forms_from_the_gateways_own_pages_are_same_origin() {
    let post = |headers: &[(&str, &str)]| {
        let mut b = Request::post("/.seibo/login").header(header::HOST, "localhost:8443");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        same_origin(&b.body(()).unwrap())
    };
    assert!(post(&[]));
    assert!(post(&[
        ("origin", "null"),
        ("sec-fetch-site", "same-origin")
    ]));
    assert!(post(&[("origin", "https://localhost:8443")]));
    assert!(post(&[
        ("origin", "https://localhost:8443"),
        ("sec-fetch-site", "same-origin")
    ]));
    assert!(!post(&[("origin", "null")]));
    assert!(!post(&[("origin", "https://evil.example")]));
    assert!(!post(&[
        ("origin", "null"),
        ("sec-fetch-site", "cross-site")
    ]));
    assert!(!post(&[("sec-fetch-site", "same-site")]));
    assert!(!post(&[
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "same-origin")
    ]));
}

#[test]
fn own_paths_are_reserved() {
    assert!(is_own_path("/.seibo/login"));
    assert!(is_own_path("/.seibo"));
    assert!(!is_own_path("/.seibox"));
    assert!(!is_own_path("/patients/P1/labs"));
}

#[test]
fn login_url_round_trips_next() {
    let u = login_url("/patients/P001/labs?a=1&b=2");
    assert_eq!(
        query_param(&u, "next").as_deref(),
        Some("/patients/P001/labs?a=1&b=2")
    );
}
