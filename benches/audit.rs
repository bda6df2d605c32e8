//! The audit log: request records appended per second through `AuditLog::record` from many
//! concurrent tasks (each call resolves only once its line is written and `fdatasync`ed: the
//! group commit), and a per-patient `audit::query` over a log of 1,000,000 request records
//! (each followed by its outcome line, as the gateway writes them: 2,000,000 lines), through
//! the sidecar index (`audit.idx`, kept by the writer as it appends) and by a full scan, and
//! `audit verify` of that log (hash chain, head anchor and index).
//!
//! `cargo bench --bench audit`. The logs are written under `target/` (a real disk: `/tmp`
//! may be tmpfs, where `fdatasync` proves nothing). Under `cargo test` (no `--bench` argument)
//! criterion runs each benchmark once and the query log has 2,000 records only.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use seibo_gate::audit::{self, AuditLog, Decision, Ingress, Outcome, QueryFilter, RequestRecord};
use seibo_gate::registry::model::Category;

const PATIENTS: u64 = 10_000;

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn scratch_root() -> PathBuf {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The filesystem type of the mount holding `p` (from /proc/self/mounts).
fn fs_type(p: &Path) -> String {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && p.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map(|(_, t)| t)
        .unwrap_or_else(|| "unknown".into())
}

/// A realistic request record: what `service::handle` writes for an allowed view.
fn rec(i: u64) -> RequestRecord {
    let patient = format!("P{:07}", (i * 7919) % PATIENTS);
    RequestRecord {
        time: audit::format_time(time::OffsetDateTime::now_utc()),
        site: "seiyo-hospital".into(),
        ingress: Ingress::Mtls,
        client: format!("203.0.113.{}:{}", i % 250, 40000 + i % 20000),
        terminal: Some(format!("pc-{}", i % 500)),
        physician: Some(format!("dr-{}", i % 500)),
        method: "GET".into(),
        path: format!("/patients/{patient}/labs"),
        patient: Some(patient),
        category: Some(Category::Labs),
        decision: Decision::Allow,
        reason: "allowed".into(),
        serial: Some("3f9a0c1e5b7d2468".into()),
        cn: Some("pc-17".into()),
        staff: None,
    }
}

const OUTCOME: Outcome = Outcome {
    status: 200,
    bytes: 1024,
    duration_us: 850,
};

/// Appends `per_task * tasks` request records (and their outcome lines) from `tasks` tasks;
/// returns the time until every `record` call had resolved (= was durable).
async fn append(log: &AuditLog, tasks: u64, per_task: u64, outcomes: bool) -> Duration {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks as usize);
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let rid = log.record(rec(t * per_task + i)).await.unwrap();
                if outcomes {
                    log.outcome(rid, OUTCOME);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn append_throughput(c: &mut Criterion) {
    let root = scratch_root();
    let rt = runtime();
    println!(
        "audit append: durability = every record() resolves only after its batch is written \
         and fdatasync'ed (group commit, one write + one fdatasync per batch); \
         log on {} ({})",
        root.display(),
        fs_type(&root)
    );
    let mut g = c.benchmark_group("audit-append-durable");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let concurrency: &[u64] = if bench_mode() {
        &[1, 32, 64, 256, 1024]
    } else {
        &[32]
    };
    for &tasks in concurrency {
        let dir = tempfile::tempdir_in(&root).unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        // Each iteration is one request record; throughput in records/s.
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("record", format!("{tasks}-tasks")),
            &tasks,
            |b, &tasks| {
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(tasks);
                    let elapsed = rt.block_on(append(&log, tasks, per_task, false));
                    // Scale to exactly `iters` records.
                    elapsed.mul_f64(iters as f64 / (per_task * tasks) as f64)
                })
            },
        );
        rt.block_on(log.close()).unwrap();
    }
    g.finish();
}

/// Lines in the log (request and outcome lines), counted independently of `verify`.
fn log_lines(dir: &Path) -> u64 {
    let log = std::fs::read(dir.join(audit::LOG_FILE)).unwrap();
    log.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Generates the query log once: `requests` request lines, each followed by its outcome.
fn generate(dir: &Path, requests: u64) {
    let rt = runtime();
    let log = AuditLog::open(dir).unwrap();
    let tasks = 1024;
    let t = rt.block_on(append(&log, tasks, requests / tasks, true));
    let rest = requests % tasks;
    rt.block_on(append(&log, rest, 1, true));
    rt.block_on(log.close()).unwrap();
    let len = std::fs::metadata(dir.join(audit::LOG_FILE)).unwrap().len();
    println!(
        "audit query: generated {} lines ({} request records + outcomes, {} patients, {:.0} MiB) \
         in {:.1?} ({:.0} lines/s durable)",
        log.written(),
        requests,
        PATIENTS,
        len as f64 / (1u64 << 20) as f64,
        t,
        log.written() as f64 / t.as_secs_f64()
    );
}

fn query(c: &mut Criterion) {
    let requests: u64 = if bench_mode() { 1_000_000 } else { 2_000 };
    let dir = tempfile::tempdir_in(scratch_root()).unwrap();
    generate(dir.path(), requests);
    let filter = QueryFilter {
        patient: Some("P0000042".into()),
        ..Default::default()
    };
    let rows = audit::query(dir.path(), &filter).unwrap();
    assert_eq!(rows, audit::query_full_scan(dir.path(), &filter).unwrap());
    let idx = std::fs::metadata(dir.path().join(audit::INDEX_FILE))
        .unwrap()
        .len();
    println!(
        "audit query: patient P0000042 has {} records of {} ({} with an outcome); index {:.1} MiB",
        rows.len(),
        requests,
        rows.iter().filter(|r| r.status.is_some()).count(),
        idx as f64 / (1u64 << 20) as f64
    );
    let mut g = c.benchmark_group("audit-query");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(10));
    g.bench_function(
        BenchmarkId::new("per-patient", format!("{requests}-records")),
        |b| b.iter(|| black_box(audit::query(dir.path(), &filter).unwrap())),
    );
    g.bench_function(
        BenchmarkId::new("per-patient-full-scan", format!("{requests}-records")),
        |b| b.iter(|| black_box(audit::query_full_scan(dir.path(), &filter).unwrap())),
    );
    g.finish();

    // `audit verify` over the same log: the whole hash chain, the head anchor and the index.
    let report = audit::verify(dir.path()).unwrap();
    assert_eq!(report.records, log_lines(dir.path()));
    let mut g = c.benchmark_group("audit-verify");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(report.records));
    g.bench_function(
        BenchmarkId::new("chain-and-index", format!("{requests}-records")),
        |b| b.iter(|| black_box(audit::verify(dir.path()).unwrap())),
    );
    g.finish();
}

criterion_group!(benches, append_throughput, query);
criterion_main!(benches);
