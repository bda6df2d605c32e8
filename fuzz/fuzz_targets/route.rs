//! Route matching and path normalisation: never panics, and whatever is accepted is a fixed
//! point (forwarding the forwarded form again gives the same target, patient and category) and
//! carries no traversal syntax.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use seibo_gate::policy::route::{normalise_path, RouteSpec, RouteTable};

fn table() -> &'static RouteTable {
    static T: OnceLock<RouteTable> = OnceLock::new();
    T.get_or_init(|| {
        let specs: Vec<RouteSpec> = toml_routes();
        RouteTable::new(&specs).expect("fuzz route table")
    })
}

fn toml_routes() -> Vec<RouteSpec> {
    let spec = |path: &str| -> RouteSpec {
        serde_json::from_value(serde_json::json!({ "path": path })).expect("spec")
    };
    let mut v = vec![spec("/patients/{patient}/{category}/**")];
    v.push(
        serde_json::from_value(serde_json::json!({
            "path": "/viewer/images", "category": "images", "patient_query": "patient"
        }))
        .expect("spec"),
    );
    v.push(
        serde_json::from_value(serde_json::json!({ "path": "/static/**", "no_patient": true }))
            .expect("spec"),
    );
    v.push(
        serde_json::from_value(serde_json::json!({
            "path": "/orders/{patient}/notes", "category": "notes", "methods": ["POST"],
            "max_body_bytes": 4096
        }))
        .expect("spec"),
    );
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let _ = normalise_path(target);
    for method in [http::Method::GET, http::Method::POST] {
        let Ok(t) = table().resolve(&method, target) else {
            continue;
        };
        let fwd = t.path_and_query();
        assert!(fwd.starts_with('/'), "{fwd:?}");
        for bad in ["/../", "/./", "//", "\\", ";", "#", "%2F", "%2f", "%25"] {
            assert!(
                !t.path.contains(bad),
                "forwarded path {:?} of {target:?} contains {bad:?}",
                t.path
            );
        }
        assert!(
            !t.path.ends_with("/..") && !t.path.ends_with("/."),
            "{:?}",
            t.path
        );
        let again = table()
            .resolve(&method, &fwd)
            .unwrap_or_else(|e| panic!("forwarded form {fwd:?} of {target:?} refused: {e}"));
        assert_eq!(again.path_and_query(), fwd, "not a fixed point: {target:?}");
        assert_eq!(again.patient, t.patient, "{target:?}");
        assert_eq!(again.category, t.category, "{target:?}");
        assert_eq!(again.route, t.route, "{target:?}");
    }
});
