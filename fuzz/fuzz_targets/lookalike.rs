//! Issue 11 item 4: the audited target is the target any Unicode-normalising EMR resolves.
//!
//! For every target the route table accepts, the forwarded path as a normalising back end
//! sees it (`route::normalising_backend_view`: NFKC, lower case, NFKC, `/` and `\` as
//! separators, `;` parameters cut, format characters dropped, trailing dots and spaces trimmed,
//! dot segments resolved) is the gateway's own list of segments folded the same way — so the
//! same route and the same patient — and every query parameter that a folding back end reads
//! as a patient key (`patient`, `patient_id`, `pid` after NFKC, case folding and `_`/`-`/`.`
//! removal) carries exactly the route's patient (none on a route without one).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use seibo_gate::policy::route::{
    backend_fold, normalising_backend_view, RouteSpec, RouteTable, DEFAULT_PATIENT_QUERY_KEYS,
};

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let specs: Vec<RouteSpec> = serde_json::from_value(serde_json::json!([
            { "path": "/patients/{patient}/{category}/**" },
            { "path": "/summary/{patient}", "category": "summaries" },
            { "path": "/viewer/images", "category": "images", "patient_query": "patient" },
            { "path": "/static/**", "no_patient": true },
            { "path": "/files/*", "no_patient": true },
        ]))
        .expect("specs");
        RouteTable::new(&specs).expect("fuzz route table")
    })
}

/// A query key as a lenient back end compares it: NFKC, case folded, `[..]` cut, only letters
/// and digits kept.
fn folded_key(k: &str) -> String {
    let f = backend_fold(k);
    f.split('[')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap_or_else(|e| panic!("forwarded {s:?} is not UTF-8: {e}"))
        .into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = table().resolve(&http::Method::GET, target) else {
        return;
    };
    let view = normalising_backend_view(&decode(&t.path))
        .unwrap_or_else(|| panic!("{target:?}: the EMR climbs above the root"));
    let ours: Vec<String> = t
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            backend_fold(&decode(s))
                .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
                .to_owned()
        })
        .collect();
    assert_eq!(view, ours, "{target:?}: a normalising EMR resolves another path");
    if let Some(p) = &t.patient {
        // The patient segment, wherever it is, is folded only by case.
        assert!(p.is_ascii(), "{target:?}: patient {p:?}");
    }
    let keys: Vec<String> = DEFAULT_PATIENT_QUERY_KEYS
        .iter()
        .map(|k| folded_key(k))
        .collect();
    for (k, v) in form_urlencoded::parse(t.query.as_deref().unwrap_or("").as_bytes()) {
        if keys.contains(&folded_key(&k)) {
            assert_eq!(
                t.patient.as_deref(),
                Some(&*v),
                "{target:?}: query key {k:?} names another patient than the audited one"
            );
        }
    }
    let again = table()
        .resolve(&http::Method::GET, &t.path_and_query())
        .unwrap_or_else(|e| panic!("forwarded form of {target:?} refused: {e}"));
    assert_eq!(again, t, "{target:?}: not a fixed point");
});
