//! Route table and path normalisation: every class of the module docs, accepted and refused.

use super::patient_keys::loose_key;
use super::*;
use crate::registry::ids::PatientId;
use crate::registry::model::Category;
use http::Method;
use percent_encoding::NON_ALPHANUMERIC;

fn spec(path: &str) -> RouteSpec {
    RouteSpec {
        path: path.to_owned(),
        category: None,
        patient_query: None,
        no_patient: false,
        methods: None,
        max_body_bytes: None,
    }
}

/// The reference table used by most tests.
/// 0 `/patients/{patient}/{category}/**`
/// 1 `/summary/{patient}` (fixed: summaries)
/// 2 `/viewer/images` (patient from `?patient=`, fixed: images)
/// 3 `/static/**` (no patient)
/// 4 `/orders/{patient}/notes` (fixed: notes, POST only)
/// 5 `/` (no patient: EMR start page)
fn table() -> RouteTable {
    let specs = vec![
        spec("/patients/{patient}/{category}/**"),
        RouteSpec {
            category: Some(Category::Summaries),
            ..spec("/summary/{patient}")
        },
        RouteSpec {
            category: Some(Category::Images),
            patient_query: Some("patient".into()),
            ..spec("/viewer/images")
        },
        RouteSpec {
            no_patient: true,
            ..spec("/static/**")
        },
        RouteSpec {
            category: Some(Category::Notes),
            methods: Some(vec!["POST".into()]),
            ..spec("/orders/{patient}/notes")
        },
        RouteSpec {
            no_patient: true,
            ..spec("/")
        },
    ];
    match RouteTable::new(&specs) {
        Ok(t) => t,
        Err(e) => panic!("reference table invalid: {e:?}"),
    }
}

fn get(target: &str) -> Result<Target, RouteError> {
    table().resolve(&Method::GET, target)
}

/// (request target, forwarded path_and_query, patient, category, route index)
type Accept = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<Category>,
    usize,
);

fn check_accepts(cases: &[Accept]) {
    let t = table();
    for (target, fwd, patient, category, route) in cases {
        let got = t
            .resolve(&Method::GET, target)
            .unwrap_or_else(|e| panic!("{target:?} refused: {e:?}"));
        assert_eq!(got.path_and_query(), *fwd, "forwarded form of {target:?}");
        assert_eq!(got.patient.as_deref(), *patient, "patient of {target:?}");
        assert_eq!(got.category, *category, "category of {target:?}");
        assert_eq!(got.route, *route, "route of {target:?}");
        // What is forwarded must resolve to the very same check (idempotence).
        let again = t
            .resolve(&Method::GET, &got.path_and_query())
            .unwrap_or_else(|e| panic!("forwarded {fwd:?} refused: {e:?}"));
        assert_eq!(again, got, "re-resolving the forwarded form of {target:?}");
    }
}

fn check_refuses(cases: &[(&str, &str)]) {
    let t = table();
    for (target, reason) in cases {
        match t.resolve(&Method::GET, target) {
            Ok(got) => panic!("{target:?} accepted as {got:?}, expected {reason}"),
            Err(e) => assert_eq!(e.reason(), *reason, "reason for {target:?}"),
        }
    }
}

use Category::*;

#[test]
fn art_8_2_patient_and_category_from_path_template() {
    check_accepts(&[
        (
            "/patients/P1/labs",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/labs/2024/result.pdf",
            "/patients/P1/labs/2024/result.pdf",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/p-01_x/staff-records/a",
            "/patients/p-01_x/staff-records/a",
            Some("p-01_x"),
            Some(StaffRecords),
            0,
        ),
        (
            "/patients/P1/images/x?b=2&a=1",
            "/patients/P1/images/x?b=2&a=1",
            Some("P1"),
            Some(Images),
            0,
        ),
    ]);
}

#[test]
fn fixed_category_route_and_query_patient_route_and_no_patient_route() {
    check_accepts(&[
        ("/summary/P9", "/summary/P9", Some("P9"), Some(Summaries), 1),
        (
            "/viewer/images?patient=P7&series=3",
            "/viewer/images?patient=P7&series=3",
            Some("P7"),
            Some(Images),
            2,
        ),
        (
            "/viewer/images?series=3&patient=P7",
            "/viewer/images?series=3&patient=P7",
            Some("P7"),
            Some(Images),
            2,
        ),
        ("/static/app.js", "/static/app.js", None, None, 3),
        (
            "/static/css/a/b.css?v=3",
            "/static/css/a/b.css?v=3",
            None,
            None,
            3,
        ),
        ("/static", "/static", None, None, 3),
        ("/", "/", None, None, 5),
    ]);
}

#[test]
fn first_matching_route_in_config_order_wins() {
    let fixed = RouteSpec {
        category: Some(Reports),
        ..spec("/x/{patient}/basic")
    };
    let generic = spec("/x/{patient}/{category}");
    let t = RouteTable::new(&[fixed.clone(), generic.clone()]).unwrap_or_else(|e| panic!("{e:?}"));
    let got = t.resolve(&Method::GET, "/x/P1/basic");
    assert_eq!(
        got.as_ref().map(|g| (g.route, g.category)),
        Ok((0, Some(Reports)))
    );
    let t = RouteTable::new(&[generic, fixed]).unwrap_or_else(|e| panic!("{e:?}"));
    let got = t.resolve(&Method::GET, "/x/P1/basic");
    assert_eq!(
        got.as_ref().map(|g| (g.route, g.category)),
        Ok((0, Some(Basic)))
    );
}

#[test]
fn art_8_2_unmapped_path_is_refused() {
    check_refuses(&[
        ("/admin", "no-route"),
        ("/patients", "no-route"),
        ("/patients/P1", "no-route"),
        // Unknown category never matches {category}.
        ("/patients/P1/billing", "no-route"),
        ("/patients/P1/LABS", "no-route"),
        // Literals are case-sensitive.
        ("/Patients/P1/labs", "no-route"),
        ("/SUMMARY/P1", "no-route"),
        // Fixed route with extra segment.
        ("/summary/P1/x", "no-route"),
        ("/viewer/images/x?patient=P1", "no-route"),
    ]);
    let empty = RouteTable::new(&[]).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(empty.is_empty());
    assert_eq!(empty.resolve(&Method::GET, "/"), Err(RouteError::NoRoute));
}

#[test]
fn method_not_allowed_and_head_follows_get() {
    let t = table();
    assert_eq!(
        t.resolve(&Method::POST, "/patients/P1/labs"),
        Err(RouteError::MethodNotAllowed)
    );
    assert_eq!(
        t.resolve(&Method::DELETE, "/static/a.js"),
        Err(RouteError::MethodNotAllowed)
    );
    assert_eq!(
        t.resolve(&Method::GET, "/orders/P1/notes"),
        Err(RouteError::MethodNotAllowed)
    );
    assert_eq!(
        t.resolve(&Method::POST, "/orders/P1/notes")
            .map(|x| x.route),
        Ok(4)
    );
    assert_eq!(
        t.resolve(&Method::POST, "/nowhere"),
        Err(RouteError::NoRoute)
    );
    // HEAD wherever GET, even when only GET is listed.
    let only_get = RouteSpec {
        methods: Some(vec!["GET".into()]),
        no_patient: true,
        ..spec("/a")
    };
    let t = RouteTable::new(&[only_get]).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(t.resolve(&Method::HEAD, "/a").is_ok());
    assert_eq!(
        t.resolve(&Method::PUT, "/a"),
        Err(RouteError::MethodNotAllowed)
    );
}

#[test]
fn method_mismatch_falls_through_to_a_later_route_that_allows_it() {
    let get_route = RouteSpec {
        category: Some(Labs),
        ..spec("/p/{patient}")
    };
    let post_route = RouteSpec {
        category: Some(Notes),
        patient_query: Some("patient".into()),
        methods: Some(vec!["POST".into()]),
        ..spec("/p/*")
    };
    let t = RouteTable::new(&[get_route, post_route]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        t.resolve(&Method::POST, "/p/P1?patient=P1")
            .map(|x| (x.route, x.patient)),
        Ok((1, Some("P1".to_owned())))
    );
}

#[test]
fn dot_segments_resolve_before_matching_so_checked_patient_is_forwarded_patient() {
    check_accepts(&[
        (
            "/patients/P2/../P1/labs",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/%2e%2e/P2/labs",
            "/patients/P2/labs",
            Some("P2"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/%2E./P2/labs",
            "/patients/P2/labs",
            Some("P2"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/.%2e/P2/labs",
            "/patients/P2/labs",
            Some("P2"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/./labs/.",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/labs/%2e",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        // A static prefix cannot be used to reach a patient page unchecked.
        (
            "/static/../patients/P2/notes",
            "/patients/P2/notes",
            Some("P2"),
            Some(Notes),
            0,
        ),
        (
            "/static/%2e%2e/summary/P3",
            "/summary/P3",
            Some("P3"),
            Some(Summaries),
            1,
        ),
        (
            "/patients/P1/labs/../../P2/labs",
            "/patients/P2/labs",
            Some("P2"),
            Some(Labs),
            0,
        ),
    ]);
}

#[test]
fn duplicate_and_trailing_slashes_are_collapsed() {
    check_accepts(&[
        (
            "//patients//P1///labs",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/P1/labs/",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        ("/static/", "/static", None, None, 3),
        ("//", "/", None, None, 5),
    ]);
}

#[test]
fn percent_encoded_unreserved_chars_decode_and_forward_canonically() {
    check_accepts(&[
        (
            "/patients/%50%31/labs",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/patients/%70%31/labs",
            "/patients/p1/labs",
            Some("p1"),
            Some(Labs),
            0,
        ),
        (
            "/%70atients/P1/%6c%61%62%73",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/%70atients/P1/%6C%61%62%73",
            "/patients/P1/labs",
            Some("P1"),
            Some(Labs),
            0,
        ),
        // Upper/lower-case escapes are the same byte and are re-encoded upper-case.
        (
            "/static/a%20b/%e3%81%82",
            "/static/a%20b/%E3%81%82",
            None,
            None,
            3,
        ),
        ("/static/a%3fb%23c", "/static/a%3Fb%23c", None, None, 3),
        (
            "/static/x+y(1)!$&'*,=:@~",
            "/static/x+y(1)!$&'*,=:@~",
            None,
            None,
            3,
        ),
        (
            "/static/%7Bx%7D%5B%5D|^",
            "/static/%7Bx%7D%5B%5D%7C%5E",
            None,
            None,
            3,
        ),
    ]);
}

#[test]
fn target_form_attacks_are_rejected() {
    let long = format!("/static/{}", "a".repeat(MAX_TARGET_LEN));
    check_refuses(&[
        ("http://evil/patients/P1/labs", "absolute-form"),
        ("HTTPS://emr/patients/P1/labs", "absolute-form"),
        ("*", "not-origin-form"),
        ("", "not-origin-form"),
        ("emr.example:443", "not-origin-form"),
        ("patients/P1/labs", "not-origin-form"),
        ("/patients/P1/labs#frag", "not-origin-form"),
        ("/patients/P1/labs?a=1#x", "not-origin-form"),
        (&long, "too-long"),
    ]);
}

#[test]
fn encoding_tricks_are_rejected() {
    check_refuses(&[
        // Encoded slash: would let the EMR see another patient path.
        ("/patients/P1/labs/..%2F..%2FP2", "encoded-slash"),
        ("/patients/P1/labs/..%2f..%2fP2", "encoded-slash"),
        ("/patients/P1%2fx/labs", "encoded-slash"),
        ("/patients/P1%2Fx/labs", "encoded-slash"),
        // Backslash, raw and encoded.
        ("/patients/P1/labs/..\\..\\P2", "backslash"),
        ("/patients/P1/labs/..%5c..%5cP2", "backslash"),
        ("/patients/P1/labs/..%5C..%5CP2", "backslash"),
        // Double encoding.
        ("/patients/P1/labs/%252e%252e", "double-encoding"),
        ("/patients/P1/labs/%252E%252E/%252F", "double-encoding"),
        ("/static/100%25", "double-encoding"),
        // Invalid escapes.
        ("/patients/P1/labs/%zz", "bad-percent-escape"),
        ("/patients/P1/labs/%4", "bad-percent-escape"),
        ("/patients/P1/labs/%", "bad-percent-escape"),
        ("/patients/P1/labs/%u002e%u002e", "bad-percent-escape"),
        // Invalid / overlong UTF-8.
        ("/%c0%ae%c0%ae/", "invalid-utf8"),
        (
            "/patients/P1/labs/%C0%AE%C0%AE/%C0%AE%C0%AE/P2",
            "invalid-utf8",
        ),
        ("/static/%e0%80%ae", "invalid-utf8"),
        ("/static/%ff", "invalid-utf8"),
        ("/static/%ed%a0%80", "invalid-utf8"),
        // Control characters, decoded (C0, DEL, C1) and raw.
        ("/patients/P1/labs%00", "control-character"),
        ("/patients/P1/labs%00/../../P2/labs", "control-character"),
        (
            "/patients/P1/labs/%0d%0aX-Patient:%20P2",
            "control-character",
        ),
        ("/static/a%7f", "control-character"),
        ("/static/a%c2%85", "control-character"),
        ("/static/a%C2%9F", "control-character"),
        ("/static/a\tb", "control-character"),
        ("/static/a\u{7f}", "control-character"),
        // Raw space / raw non-ASCII.
        ("/static/a b", "invalid-character"),
        ("/static/\u{3042}", "invalid-character"),
        ("/static/\u{85}", "invalid-character"),
        // Matrix parameters, raw and encoded.
        ("/patients/P1;jsessionid=x/labs", "matrix-parameter"),
        ("/patients/P1/labs;/../../P2/labs", "matrix-parameter"),
        ("/patients/P1%3bx/labs", "matrix-parameter"),
        ("/patients/P1%3Bx/labs", "matrix-parameter"),
        // Unicode look-alikes of path syntax.
        (
            "/patients/P1/labs/%EF%BC%8E%EF%BC%8E/P2",
            "unicode-lookalike",
        ),
        ("/patients/P1/labs/%ef%bc%8f", "unicode-lookalike"),
        ("/patients/P1/labs/%E2%80%A5", "unicode-lookalike"),
        ("/patients/P1/labs/%EF%BC%BC", "unicode-lookalike"),
        // Dot-segment look-alikes (Windows strips trailing dots/spaces).
        (
            "/patients/P1/labs/..%20/..%20/P2/labs",
            "dot-segment-lookalike",
        ),
        ("/patients/P1/labs/.../P2", "dot-segment-lookalike"),
        ("/patients/P1/labs/.%20./x", "dot-segment-lookalike"),
    ]);
}

#[test]
fn dot_segment_above_root_is_rejected() {
    check_refuses(&[
        ("/..", "dot-segment-escape"),
        ("/../patients/P1/labs", "dot-segment-escape"),
        ("/%2e%2e/patients/P1/labs", "dot-segment-escape"),
        ("/patients/../../etc/passwd", "dot-segment-escape"),
        ("/static/%2E%2E/..", "dot-segment-escape"),
    ]);
}

#[test]
fn bad_patient_ids_are_rejected_not_passed_through() {
    let long_id = format!("/summary/{}", "A".repeat(65));
    check_refuses(&[
        ("/patients/-P1/labs", "bad-patient-id"),
        ("/patients/_P1/labs", "bad-patient-id"),
        ("/patients/P1.x/labs", "bad-patient-id"),
        ("/patients/P%201/labs", "bad-patient-id"),
        ("/patients/P1'or'1/labs", "bad-patient-id"),
        ("/patients/%E3%81%82/labs", "bad-patient-id"),
        ("/patients/P1:2/labs", "bad-patient-id"),
        (&long_id, "bad-patient-id"),
        ("/viewer/images?patient=", "bad-patient-id"),
        ("/viewer/images?patient=P1+P2", "bad-patient-id"),
        ("/viewer/images?patient=P1,P2", "bad-patient-id"),
        ("/viewer/images?patient=P1%26patient%3DP2", "bad-patient-id"),
        ("/viewer/images?patient=P1;patient=P2", "bad-patient-id"),
    ]);
    let max_id = format!("/summary/{}", "A".repeat(64));
    assert!(get(&max_id).is_ok());
}

#[test]
fn patient_query_parameter_must_appear_exactly_once() {
    check_refuses(&[
        ("/viewer/images", "missing-patient-parameter"),
        ("/viewer/images?", "missing-patient-parameter"),
        ("/viewer/images?series=1", "missing-patient-parameter"),
        (
            "/viewer/images?patient=P1&patient=P2",
            "duplicate-patient-parameter",
        ),
        (
            "/viewer/images?pat%69ent=P2&patient=P1",
            "duplicate-patient-parameter",
        ),
        (
            "/viewer/images?patient=P1&PATIENT=P2",
            "duplicate-patient-parameter",
        ),
        (
            "/viewer/images?patient=P1&patient[]=P2",
            "duplicate-patient-parameter",
        ),
        (
            "/viewer/images?patient=P1&patient%5B0%5D=P2",
            "duplicate-patient-parameter",
        ),
        ("/viewer/images?Patient=P2", "lookalike-patient-parameter"),
        (
            "/viewer/images?patient%20=P2",
            "lookalike-patient-parameter",
        ),
    ]);
}

#[test]
fn query_is_validated_and_reserialised_canonically() {
    check_accepts(&[
        (
            "/viewer/images?patient=%50%31&q=a%20b&r=x+y",
            "/viewer/images?patient=P1&q=a+b&r=x+y",
            Some("P1"),
            Some(Images),
            2,
        ),
        (
            "/static/a?x=1;y=2&z",
            "/static/a?x=1%3By%3D2&z=",
            None,
            None,
            3,
        ),
        ("/static/a?", "/static/a", None, None, 3),
        ("/static/a?&&", "/static/a", None, None, 3),
        (
            "/static/a?s=%25&t=%e3%81%82",
            "/static/a?s=%25&t=%E3%81%82",
            None,
            None,
            3,
        ),
        (
            "/patients/P1/labs?patient=P1",
            "/patients/P1/labs?patient=P1",
            Some("P1"),
            Some(Labs),
            0,
        ),
    ]);
    check_refuses(&[
        ("/static/a?x=%zz", "bad-percent-escape"),
        ("/static/a?x=%4", "bad-percent-escape"),
        ("/static/a?x=%00", "control-character"),
        ("/static/a?x=%0d%0aHost:evil", "control-character"),
        ("/static/a?x\u{0}=1", "control-character"),
        ("/static/a?x=%c2%85", "control-character"),
        ("/static/a?x=%c0%ae", "invalid-utf8"),
        ("/static/a?x=a b", "invalid-character"),
        ("/viewer/images?patient=P1%00", "control-character"),
    ]);
}

/// Art 8.2 (issue 11 item 4): compatibility forms of `.` `..` `/` `\` `;` `%` `?` `#`, dot
/// segments with non-ASCII spaces, invisible characters or combining marks, best-fit
/// punctuation and case-fold tricks are refused by rule; each case is a look-alike a
/// normalising EMR would resolve differently from the gateway.
#[test]
fn art_8_2_unicode_lookalikes_refused_by_rule() {
    let enc = |s: &str| -> String {
        percent_encoding::utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
    };
    let cases: &[(&str, &str)] = &[
        ("\u{FE19}", "unicode-lookalike"), // vertical horizontal ellipsis -> "..."
        ("\u{FE30}", "unicode-lookalike"), // vertical two dot leader -> ".."
        ("\u{FE52}", "unicode-lookalike"), // small full stop
        ("\u{FF0E}", "unicode-lookalike"), // fullwidth full stop
        ("\u{FF0E}\u{FF0E}", "unicode-lookalike"),
        ("\u{2024}", "unicode-lookalike"), // one dot leader
        ("\u{2024}\u{2024}", "unicode-lookalike"),
        ("\u{2025}", "unicode-lookalike"),   // two dot leader
        ("\u{2026}", "unicode-lookalike"),   // ellipsis
        ("\u{FF0F}", "unicode-lookalike"),   // fullwidth solidus
        ("\u{FE68}", "unicode-lookalike"),   // small reverse solidus
        ("\u{FF3C}", "unicode-lookalike"),   // fullwidth reverse solidus
        ("x\u{FF1B}y", "unicode-lookalike"), // fullwidth semicolon
        ("x\u{FE54}y", "unicode-lookalike"), // small semicolon
        ("x\u{037E}y", "unicode-lookalike"), // Greek question mark -> ";"
        ("x\u{FE14}y", "unicode-lookalike"), // vertical semicolon
        ("x\u{FF1F}y", "unicode-lookalike"), // fullwidth question mark
        ("x\u{FF03}y", "unicode-lookalike"), // fullwidth number sign
        ("x\u{FF05}y", "unicode-lookalike"), // fullwidth percent
        ("P\u{FF10}\u{FF10}2", "unicode-lookalike"), // fullwidth digits
        ("\u{017F}tatic", "unicode-lookalike"), // long s
        ("\u{212A}", "unicode-lookalike"),   // Kelvin sign
        ("\u{FB03}", "unicode-lookalike"),   // ffi ligature
        ("\u{2460}", "unicode-lookalike"),   // circled digit one
        ("..\u{00A0}", "unicode-invisible"), // no-break space
        ("..\u{3000}", "unicode-invisible"), // ideographic space
        ("..\u{2028}", "unicode-invisible"), // line separator
        ("..\u{200B}", "unicode-invisible"), // zero width space
        ("\u{FEFF}..", "unicode-invisible"), // BOM
        (".\u{200D}.", "unicode-invisible"), // zero width joiner
        ("..\u{00AD}", "unicode-invisible"), // soft hyphen
        ("a\u{202E}b", "unicode-invisible"), // right-to-left override
        ("a\u{E000}", "unicode-invisible"),  // private use
        ("a\u{0378}", "unicode-invisible"),  // unassigned
        ("..\u{0301}", "dot-segment-lookalike"), // combining acute
        ("..\u{20DD}", "dot-segment-lookalike"), // enclosing circle
        ("a\u{00A5}b", "unicode-punctuation"), // yen: backslash in CP932 best fit
        ("a\u{20A9}b", "unicode-punctuation"), // won: backslash in CP949
        ("a\u{2215}b", "unicode-punctuation"), // division slash
        ("a\u{2044}b", "unicode-punctuation"), // fraction slash
        ("a\u{2027}b", "unicode-punctuation"), // hyphenation point
        ("a\u{3002}b", "unicode-punctuation"), // ideographic full stop
    ];
    for (seg, reason) in cases {
        for target in [
            format!("/patients/P1/labs/{}/P2/labs", enc(seg)),
            format!("/static/{}", enc(seg)),
            format!("/static/x/{}/..", enc(seg)),
        ] {
            match get(&target) {
                Ok(t) => panic!("{seg:?} in {target:?} accepted as {t:?}"),
                Err(e) => assert_eq!(e.reason(), *reason, "{seg:?} in {target:?}"),
            }
        }
    }
    // Letters, digits and marks of other scripts stay allowed where a route allows them.
    for seg in [
        "\u{691C}\u{67FB}",
        "\u{30EC}\u{30F3}\u{30C8}\u{30B2}\u{30F3}",
        "caf\u{E9}",
    ] {
        let target = format!("/static/{}", enc(seg));
        assert!(get(&target).is_ok(), "{seg:?}");
    }
}

/// Art 8.2 (issue 11 item 4): whatever is accepted, a Unicode-normalising EMR (NFKC, case
/// folding, Windows trimming, `\` and `;` as syntax) resolves to the same segments, route
/// and patient; checked over look-alike inputs and a pseudo-random mix.
#[test]
fn art_8_2_accepted_targets_resolve_the_same_in_a_normalising_emr() {
    const TOKENS: &[&str] = &[
        "/",
        "patients",
        "P1",
        "P2",
        "labs",
        "static",
        "viewer",
        "images",
        ".",
        "..",
        "%2e",
        "%EF%BC%8E",
        "%EF%B8%99",
        "%EF%B8%B0",
        "%E2%80%A4",
        "%C2%A0",
        "%E3%80%80",
        "%E2%80%8B",
        "%C5%BF",
        "%E2%84%AA",
        "%C2%A5",
        "%E6%A4%9C",
        "%CC%81",
        "%20",
        "x",
        "?",
        "&",
        "=",
        "patient",
        "pid",
        "PID",
        "patient_id",
        "pat%C4%B1ent",
        "%EF%BD%90id",
    ];
    let t = table();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut target = String::from("/");
        for _ in 0..(next() % 10) {
            let i = usize::try_from(next() % TOKENS.len() as u64).unwrap_or(0);
            target.push_str(TOKENS[i]);
        }
        let Ok(got) = t.resolve(&Method::GET, &target) else {
            continue;
        };
        accepted += 1;
        assert_emr_sees_the_same(&t, &target, &got);
    }
    assert!(accepted > 100, "only {accepted} accepted");
}

/// The property of the `lookalike` fuzz target, shared with it in spirit.
fn assert_emr_sees_the_same(t: &RouteTable, target: &str, got: &Target) {
    let decoded = percent_encoding::percent_decode_str(&got.path)
        .decode_utf8()
        .unwrap_or_else(|e| panic!("{target:?}: forwarded path not UTF-8: {e}"));
    let view = normalising_backend_view(&decoded)
        .unwrap_or_else(|| panic!("{target:?}: the EMR climbs above the root"));
    let ours: Vec<String> = got
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            backend_fold(
                &percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap_or_default(),
            )
        })
        .collect();
    // Windows trims trailing dots and spaces: a segment may lose them, never change
    // otherwise (a segment of nothing else is refused).
    let trimmed: Vec<String> = ours
        .iter()
        .map(|s| {
            s.trim_end_matches(|c: char| c == '.' || c.is_whitespace())
                .to_owned()
        })
        .collect();
    assert_eq!(view, trimmed, "{target:?}: the EMR resolves another path");
    for (k, v) in form_urlencoded::parse(got.query.as_deref().unwrap_or("").as_bytes()) {
        let folded = loose_key(&backend_fold(&k));
        if DEFAULT_PATIENT_QUERY_KEYS
            .iter()
            .any(|p| loose_key(p) == folded)
        {
            assert_eq!(
                got.patient.as_deref(),
                Some(&*v),
                "{target:?}: query names another patient"
            );
        }
    }
    let again = t.resolve(&Method::GET, &got.path_and_query());
    assert_eq!(again.as_ref(), Ok(got), "{target:?}");
}

/// Art 8.2 (issue 11 item 5): a query parameter naming a patient (`patient`, `patient_id`,
/// `pid`, in any spelling) must be the route's patient; on a route without a patient it is
/// refused; the keys are configurable and validated.
#[test]
fn art_8_2_patient_query_parameter_must_agree_with_the_route() {
    check_refuses(&[
        ("/patients/P1/labs?patient=P2", "patient-parameter-mismatch"),
        ("/patients/P1/labs?x=1&pid=P2", "patient-parameter-mismatch"),
        (
            "/patients/P1/labs?Patient_ID=P2",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P1/labs?patient-id=P2",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P1/labs?PID%5B%5D=P2",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P1/labs?pat%69ent=P2",
            "patient-parameter-mismatch",
        ),
        ("/patients/P1/labs?patient=p1", "patient-parameter-mismatch"),
        (
            "/patients/P1/labs?patient=P1%20",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P1/labs?patient=P1&patient=P2",
            "patient-parameter-mismatch",
        ),
        ("/summary/P1?patient_id=P2", "patient-parameter-mismatch"),
        (
            "/viewer/images?patient=P1&pid=P2",
            "patient-parameter-mismatch",
        ),
        (
            "/static/x?patient=P2",
            "patient-parameter-on-no-patient-route",
        ),
        ("/static/x?PID=P2", "patient-parameter-on-no-patient-route"),
        ("/?patient_id=P1", "patient-parameter-on-no-patient-route"),
        // Non-ASCII keys never reach the comparison (item 4).
        (
            "/patients/P1/labs?%EF%BD%90atient=P2",
            "non-ascii-query-key",
        ),
        ("/patients/P1/labs?pat%C4%B1ent=P2", "non-ascii-query-key"),
        ("/patients/P1/labs?%C5%BFid=P2", "non-ascii-query-key"),
        ("/static/x?pi%E2%84%AA=P2", "non-ascii-query-key"),
    ]);
    check_accepts(&[
        (
            "/patients/P1/labs?pid=P1&page=2",
            "/patients/P1/labs?pid=P1&page=2",
            Some("P1"),
            Some(Labs),
            0,
        ),
        (
            "/viewer/images?patient=P1&patient_id=P1",
            "/viewer/images?patient=P1&patient_id=P1",
            Some("P1"),
            Some(Images),
            2,
        ),
        ("/static/x?v=3", "/static/x?v=3", None, None, 3),
        (
            "/static/x?t=%E6%A4%9C",
            "/static/x?t=%E6%A4%9C",
            None,
            None,
            3,
        ),
    ]);
    // A site's own keys replace the defaults.
    let t = table()
        .with_patient_query_keys(&["kanja".into(), "emr.patient".into()])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        t.resolve(&Method::GET, "/patients/P1/labs?KANJA=P2")
            .map_err(|e| e.reason()),
        Err("patient-parameter-mismatch")
    );
    assert_eq!(
        t.resolve(&Method::GET, "/static/a?emr_patient=P2")
            .map_err(|e| e.reason()),
        Err("patient-parameter-on-no-patient-route")
    );
    assert!(t.resolve(&Method::GET, "/static/a?pid=1").is_ok());
    let errs = table()
        .with_patient_query_keys(&[
            "ok".into(),
            "".into(),
            "pa tient".into(),
            "Patient".into(),
            "p\u{FF41}".into(),
            "patient".into(),
            "--".into(),
        ])
        .err()
        .unwrap_or_default();
    let idx: Vec<usize> = errs.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, vec![1, 2, 4, 5, 6], "{errs:?}");
}

#[test]
fn normalise_path_is_pure_and_returns_decoded_segments() {
    let ok: &[(&str, &[&str])] = &[
        ("/", &[]),
        ("/a/b", &["a", "b"]),
        ("/a%20b/%E3%81%82", &["a b", "\u{3042}"]),
        ("/a/./b/../c", &["a", "c"]),
        ("/a/%2e%2E/b", &["b"]),
        ("///a//", &["a"]),
        ("/a/..", &[]),
    ];
    for (raw, want) in ok {
        let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(normalise_path(raw), Ok(want), "{raw:?}");
    }
    for (raw, reason) in [
        ("a/b", "not-origin-form"),
        ("/a?b", "not-origin-form"),
        ("/a%2fb", "encoded-slash"),
        ("/..", "dot-segment-escape"),
    ] {
        assert_eq!(
            normalise_path(raw).map_err(|e| e.reason()),
            Err(reason),
            "{raw:?}"
        );
    }
}

#[test]
fn route_error_reasons_are_short_codes() {
    assert_eq!(RouteError::NoRoute.reason(), "no-route");
    assert_eq!(RouteError::MethodNotAllowed.reason(), "method-not-allowed");
    assert_eq!(RouteError::BadTarget("backslash").reason(), "backslash");
    assert_eq!(
        RouteError::BadTarget("backslash").to_string(),
        "bad request target: backslash"
    );
}

#[test]
fn config_errors_are_all_reported_with_route_index() {
    let specs = vec![
        spec("/ok/{patient}/{category}"), // 0 fine
        spec("/a/{patient}"),             // 1 no category source
        RouteSpec {
            category: Some(Labs),
            ..spec("/b/{category}/{patient}") // 2 both category sources
        },
        RouteSpec {
            category: Some(Labs),
            ..spec("/c/x") // 3 no patient source
        },
        RouteSpec {
            category: Some(Labs),
            patient_query: Some("patient".into()),
            ..spec("/d/{patient}") // 4 both patient sources
        },
        RouteSpec {
            no_patient: true,
            ..spec("/e/{patient}/**") // 5 no_patient with {patient}
        },
        spec("/f/**/{patient}/{category}"), // 6 ** not last
        spec("/g/{patient}/{cat}"),         // 7 unknown placeholder
        spec(""),                           // 8 empty
        spec("/ok/{patient}/{category}"),   // 9 duplicate of 0
        RouteSpec {
            methods: Some(vec!["get".into(), "TRACE".into(), "PO ST".into()]),
            ..spec("/h/{patient}/{category}") // 10 three bad methods
        },
        spec("h/{patient}/{category}"),            // 11 not absolute
        spec("/i//{patient}/{category}"),          // 12 empty segment
        spec("/j/../{patient}/{category}"),        // 13 dot segment
        spec("/k/{patient}/{patient}/{category}"), // 14 repeated
        spec("/l/a%2fb/{patient}/{category}"),     // 15 bad literal
        RouteSpec {
            category: Some(Labs),
            patient_query: Some("pa tient".into()),
            ..spec("/m") // 16 bad query name
        },
        RouteSpec {
            methods: Some(vec![]),
            ..spec("/n/{patient}/{category}") // 17 no methods
        },
        RouteSpec {
            no_patient: true,
            patient_query: Some("p".into()),
            ..spec("/o/**") // 18 no_patient with patient_query
        },
        spec("/p/x*/{patient}/{category}"), // 19 glob inside literal
    ];
    let errs = match RouteTable::new(&specs) {
        Ok(_) => panic!("invalid config accepted"),
        Err(e) => e,
    };
    let idx = |e: &RouteConfigError| match e {
        RouteConfigError::EmptyTemplate { index }
        | RouteConfigError::NotAbsolute { index, .. }
        | RouteConfigError::EmptySegment { index, .. }
        | RouteConfigError::DotSegment { index, .. }
        | RouteConfigError::BadLiteral { index, .. }
        | RouteConfigError::UnknownPlaceholder { index, .. }
        | RouteConfigError::RepeatedPlaceholder { index, .. }
        | RouteConfigError::GlobNotLast { index, .. }
        | RouteConfigError::PatientSource { index, .. }
        | RouteConfigError::CategorySource { index, .. }
        | RouteConfigError::BadPatientQuery { index, .. }
        | RouteConfigError::NoMethods { index, .. }
        | RouteConfigError::BadMethod { index, .. }
        | RouteConfigError::Duplicate { index, .. } => *index,
    };
    let mut indices: Vec<usize> = errs.iter().map(idx).collect();
    indices.dedup();
    assert_eq!(indices, (1..=19).collect::<Vec<_>>(), "{errs:#?}");
    assert_eq!(errs.iter().filter(|e| idx(e) == 10).count(), 3);
    for e in &errs {
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("route #{}", idx(e))), "{msg}");
        if idx(e) != 8 {
            assert!(msg.contains(&format!("{:?}", specs[idx(e)].path)), "{msg}");
        }
    }
    assert!(matches!(
        errs.iter().find(|e| idx(e) == 9),
        Some(RouteConfigError::Duplicate { first: 0, .. })
    ));
    assert!(matches!(
        errs.iter().find(|e| idx(e) == 6),
        Some(RouteConfigError::GlobNotLast { .. })
    ));
    assert!(matches!(
        errs.iter().find(|e| idx(e) == 7),
        Some(RouteConfigError::UnknownPlaceholder { placeholder, .. }) if placeholder == "{cat}"
    ));
}

#[test]
fn route_spec_deserialises_from_toml_and_rejects_unknown_fields() {
    #[derive(serde::Deserialize)]
    struct File {
        route: Vec<RouteSpec>,
    }
    let text = r#"
        [[route]]
        path = "/patients/{patient}/{category}/**"

        [[route]]
        path = "/viewer/images"
        patient_query = "patient"
        category = "staff-records"
        methods = ["GET", "POST"]

        [[route]]
        path = "/static/**"
        no_patient = true
    "#;
    let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.route[1].category, Some(StaffRecords));
    let t = RouteTable::new(&file.route).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(t.len(), 3);
    assert!(t
        .resolve(&Method::POST, "/viewer/images?patient=P1")
        .is_ok());

    let bad = "[[route]]\npath = \"/x\"\nno_patient = true\npatient = \"p\"\n";
    assert!(toml::from_str::<File>(bad).is_err());
    let bad_cat = "[[route]]\npath = \"/x/{patient}\"\ncategory = \"billing\"\n";
    assert!(toml::from_str::<File>(bad_cat).is_err());
}

#[test]
fn fuzz_forwarded_form_is_a_fixed_point_and_free_of_traversal_syntax() {
    const TOKENS: &[&str] = &[
        "/",
        "//",
        "patients",
        "P1",
        "P2",
        "labs",
        "static",
        "summary",
        "viewer",
        "images",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        "%00",
        "%c0%ae",
        "%3b",
        ";",
        "\\",
        "?",
        "&",
        "=",
        "patient",
        "pat%69ent",
        "+",
        "%20",
        "%e3%81%82",
        "%",
        "#",
        "x",
        "-",
        "%50",
    ];
    let t = table();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut target = String::from("/");
        for _ in 0..(next() % 12) {
            let i = usize::try_from(next() % TOKENS.len() as u64).unwrap_or(0);
            target.push_str(TOKENS[i]);
        }
        for method in [Method::GET, Method::POST] {
            let Ok(got) = t.resolve(&method, &target) else {
                continue;
            };
            accepted += 1;
            let fwd = got.path_and_query();
            for seg in got.path.split('/') {
                assert!(seg != "." && seg != "..", "{target:?} -> {fwd:?}");
            }
            for bad in ["%25", "%2F", "%5C", ";", "\\", "//", "#"] {
                assert!(!got.path.contains(bad), "{target:?} -> {fwd:?}");
            }
            if let Some(p) = &got.patient {
                assert!(PatientId::is_valid(p), "{target:?}");
            }
            assert_eq!(
                t.resolve(&method, &fwd).as_ref(),
                Ok(&got),
                "{target:?} -> {fwd:?}"
            );
        }
    }
    assert!(
        accepted > 50,
        "fuzz reached only {accepted} accepted targets"
    );
}

#[test]
fn route_table_is_send_sync_clone_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_traits::<RouteTable>();
    assert_traits::<Target>();
    assert_traits::<RouteError>();
}
