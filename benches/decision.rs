//! The decision path, without TLS or I/O: `decide_one` below (terminal by fingerprint →
//! physician → route → consent) over a sled store holding N physicians, N terminals and N
//! consents, and `RouteTable::resolve` alone.
//!
//! `cargo bench --bench decision`. Under `cargo test` (no `--bench` argument) criterion runs
//! each benchmark once and the store is small.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use time::{Date, OffsetDateTime};

use seibo_gate::ops::clock;
use std::sync::Arc;

use seibo_gate::policy::decision::{self, Decision, Refusal};
use seibo_gate::policy::identity;
use seibo_gate::policy::route::{RouteSpec, RouteTable};
use seibo_gate::registry::model::{Consent, Physician, Terminal};
use seibo_gate::registry::store::Store;

/// Identity, then route and consent, as the request path runs them (without the connection's
/// identity cache).
fn decide_one(
    store: &Store,
    routes: &RouteTable,
    fingerprint: &str,
    method: &http::Method,
    path_and_query: &str,
    now: OffsetDateTime,
) -> Decision {
    match identity::resolve(store, fingerprint, now) {
        Ok(Ok(who)) => {
            decision::authorize(store, routes, Arc::new(who), method, path_and_query, now)
        }
        Ok(Err(r)) => Decision::deny(Refusal::Identity(r), None, None),
        Err(_) => Decision::deny(Refusal::StoreUnavailable, None, None),
    }
}

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn fingerprint(i: usize) -> String {
    format!("{i:064x}")
}

fn patient(i: usize) -> String {
    format!("P{i:07}")
}

/// Builds a registry value from JSON, so that fields added later with a default do not break
/// the benchmark.
fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A store with `n` physicians, one terminal each, and `n` consented patients.
fn populate(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let registered = "2026-04-01T09:00:00+09:00";
    for i in 0..n {
        let p: Physician = from_json(json!({
            "id": format!("dr-{i}"),
            "name": format!("Physician {i}"),
            "site": "seiyo-hospital",
            "suspended": null,
            "registered": registered,
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g",
        }));
        rt.block_on(store.add_physician(&p)).unwrap();
        let t: Terminal = from_json(json!({
            "name": format!("pc-{i}"),
            "physician": format!("dr-{i}"),
            "fingerprint": fingerprint(i),
            "serial": format!("{i:016x}"),
            "not_after": "2036-04-01T09:00:00+09:00",
            "revoked": false,
            "registered": registered,
        }));
        rt.block_on(store.add_terminal(&t)).unwrap();
        let c: Consent = from_json(json!({
            "patient": patient(i),
            "by": {"kind": "patient"},
            "site": "seiyo-hospital",
            "form_ref": format!("様式6-{i}"),
            "published": "2026-04-01",
            "no_extension": false,
            "last_view": null,
            "withdrawn": null,
        }));
        rt.block_on(store.grant_consent(&c)).unwrap();
    }
    store.flush().unwrap();
    (dir, store)
}

/// The routes `seibo-gate init` writes, plus a query-parameter route and a fixed category.
fn routes() -> RouteTable {
    let specs: Vec<RouteSpec> = from_json(json!([
        {"path": "/patients/{patient}/{category}/**"},
        {"path": "/emr/lab/view", "category": "labs", "patient_query": "pid"},
        {"path": "/static/**", "no_patient": true},
    ]));
    RouteTable::new(&specs).unwrap()
}

fn decide(c: &mut Criterion) {
    let sizes: &[usize] = if bench_mode() { &[100, 10_000] } else { &[10] };
    let routes = routes();
    let now = OffsetDateTime::new_in_offset(
        Date::from_calendar_date(2026, time::Month::November, 26).unwrap(),
        time::Time::from_hms(10, 0, 0).unwrap(),
        clock::JST,
    );
    let get = http::Method::GET;
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));
    for &n in sizes {
        let (_dir, store) = populate(n);
        // Stride through the registry so that successive lookups hit different keys.
        let fps: Vec<String> = (0..n).map(fingerprint).collect();
        let paths: Vec<String> = (0..n)
            .map(|i| format!("/patients/{}/labs", patient((i * 7919) % n)))
            .collect();
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("allow", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 1) % n;
                let d = decide_one(&store, &routes, &fps[i], &get, &paths[i], now);
                debug_assert!(matches!(d, Decision::Allow(_)));
                black_box(d)
            })
        });
        g.bench_with_input(BenchmarkId::new("deny-unknown-terminal", n), &n, |b, _| {
            let fp = "f".repeat(64);
            b.iter(|| black_box(decide_one(&store, &routes, &fp, &get, &paths[0], now)))
        });
        g.bench_with_input(BenchmarkId::new("deny-no-consent", n), &n, |b, _| {
            b.iter(|| {
                black_box(decide_one(
                    &store,
                    &routes,
                    &fps[0],
                    &get,
                    "/patients/Q0000001/labs",
                    now,
                ))
            })
        });
        // The other store access of an allowed view (art 8.3): a read after the first view of
        // the day (the write, when due, runs beside the request).
        let today = now.date();
        g.bench_with_input(BenchmarkId::new("touch-consent", n), &n, |b, &n| {
            let mut j = 0usize;
            b.iter(|| {
                j = (j + 1) % n;
                store.view_moves_last_view(&patient(j), today)
            })
        });
    }
    g.finish();
}

fn resolve(c: &mut Criterion) {
    let routes = routes();
    let get = http::Method::GET;
    let mut g = c.benchmark_group("route-resolve");
    g.throughput(Throughput::Elements(1));
    for (name, target) in [
        ("path", "/patients/P0000001/labs"),
        ("path-deep", "/patients/P0000001/images/2026/11/ct-0001.dcm"),
        ("query", "/emr/lab/view?pid=P0000001&from=2026-01-01"),
        ("encoded", "/patients/P0000001/%6cabs/./x/../y"),
        ("no-route", "/admin/users"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(routes.resolve(&get, black_box(target))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = decide, resolve
}
criterion_main!(benches);
