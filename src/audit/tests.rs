//! Tests of the audit log: writing, recovery, tampering, the head anchor, queries.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use super::anchor::{read_head, write_head, HeadErr, HeadFile, HEAD_SLOT};
use super::chain::{
    encode_line, hex_sha256, outcome_rid, written_kind, BodyOut, HASH_SUFFIX_LEN, ZERO_HASH,
};
use super::*;
use crate::ops::clock::JST;
use crate::registry::model::Category;

fn now_jst() -> String {
    format_time(OffsetDateTime::now_utc())
}

fn rec(i: u64) -> RequestRecord {
    RequestRecord {
        time: now_jst(),
        site: "seibo".into(),
        ingress: Ingress::Mtls,
        client: format!("10.0.0.{}:4433", i % 250),
        terminal: Some(format!("T{}", i % 7)),
        physician: Some(format!("DR{}", i % 3)),
        method: "GET".into(),
        path: format!("/emr/patient/{i}"),
        patient: Some(format!("P{}", i % 5)),
        category: Some(Category::Labs),
        decision: if i.is_multiple_of(4) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        reason: "consent".into(),
        serial: Some("01ab".into()),
        cn: Some("Dr. Tanaka \"quoted\" 田中".into()),
        staff: None,
    }
}

fn lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    fs::write(dir.join(LOG_FILE), s).unwrap();
}

fn broken_at(dir: &Path) -> (u64, Option<u64>, String) {
    match verify(dir) {
        Err(VerifyError::Broken { line, seq, reason }) => (line, seq, reason),
        other => panic!("expected Broken, got {other:?}"),
    }
}

/// Writes `n` request lines sequentially (seq 1..=n), closes.
async fn make_log(dir: &Path, n: u64) {
    let log = AuditLog::open(dir).unwrap();
    for i in 1..=n {
        assert_eq!(log.record(rec(i)).await.unwrap(), i);
    }
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_append_reopen_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = AuditLog::open(&dir).unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50u64 {
                let rid = log.record(rec(t * 100 + i)).await.unwrap();
                log.outcome(
                    rid,
                    Outcome {
                        status: 200,
                        bytes: i,
                        duration_us: 10,
                    },
                );
                ids.push(rid);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    log.close().await.unwrap();
    assert_eq!(log.written(), 3200);
    assert!(!log.failed());
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1600);
    assert_eq!(verify(&dir).unwrap().records, 3200);
    // After close, record is refused.
    assert!(matches!(log.record(rec(1)).await, Err(AuditError::Closed)));
    log.close().await.unwrap();

    let log = AuditLog::open(&dir).unwrap();
    let rid = log.record(rec(1)).await.unwrap();
    assert_eq!(rid, 3201);
    log.outcome(
        rid,
        Outcome {
            status: 404,
            bytes: 0,
            duration_us: 1,
        },
    );
    log.close().await.unwrap();
    let report = verify(&dir).unwrap();
    assert_eq!(report.records, 3202);
    for (i, l) in lines(&dir).iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1));
    }
    let Ok(Some(head)) = read_head(&dir) else {
        panic!("no anchor")
    };
    assert_eq!(head.seq, 3202);
    assert_eq!(head.hash, report.head);

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(LOG_FILE)), 0o600);
}

#[tokio::test]
async fn empty_log_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    log.close().await.unwrap();
    let r = verify(tmp.path()).unwrap();
    assert_eq!(r.records, 0);
    assert_eq!(r.head, "0".repeat(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_log(dir, 10).await;
    assert_eq!(verify(dir).unwrap().records, 10);
    let orig = lines(dir);

    // Edited field in a middle line.
    let mut l = orig.clone();
    l[4] = l[4].replace("/emr/patient/5", "/emr/patient/6");
    write_lines(dir, &l);
    let (line, seq, reason) = broken_at(dir);
    assert_eq!((line, seq), (5, Some(5)), "{reason}");
    assert!(reason.contains("altered"), "{reason}");
    // The gateway refuses to start on it, naming the line.
    match AuditLog::open(dir) {
        Err(AuditError::Corrupt { line: 5, .. }) => {}
        other => panic!("expected Corrupt at 5, got {other:?}"),
    }

    // Deleted middle line.
    let mut l = orig.clone();
    l.remove(4);
    write_lines(dir, &l);
    assert_eq!(broken_at(dir).0, 5);
    assert_eq!(broken_at(dir).1, Some(6));

    // Swapped lines.
    let mut l = orig.clone();
    l.swap(3, 4);
    write_lines(dir, &l);
    assert_eq!(broken_at(dir).0, 4);

    // Inserted copy of a line.
    let mut l = orig.clone();
    l.insert(3, orig[2].clone());
    write_lines(dir, &l);
    assert_eq!(broken_at(dir).0, 4);

    // Truncated tail: caught by the head anchor.
    write_lines(dir, &orig[..8]);
    let (line, seq, reason) = broken_at(dir);
    assert_eq!((line, seq), (9, Some(10)), "{reason}");
    assert!(AuditLog::open(dir).is_err());

    // Forgery: edit line 5 and recompute its hash; the link from line 6 breaks.
    let mut l = orig.clone();
    let edited = l[4]
        .replace("\"deny\"", "\"allow\"")
        .replace("/emr/patient/5", "/x");
    let prev: [u8; 64] = {
        let v: serde_json::Value = serde_json::from_str(&edited).unwrap();
        v["prev"].as_str().unwrap().as_bytes().try_into().unwrap()
    };
    let canon = &edited[..edited.len() - HASH_SUFFIX_LEN];
    let h = hex_sha256(&[&prev, canon.as_bytes(), b"}"]);
    l[4] = format!(
        "{canon},\"hash\":\"{}\"}}",
        std::str::from_utf8(&h).unwrap()
    );
    write_lines(dir, &l);
    let (line, seq, reason) = broken_at(dir);
    assert_eq!((line, seq), (6, Some(6)), "{reason}");
    assert!(reason.contains("prev"), "{reason}");

    // Whole-chain forgery of the tail is caught by the anchor hash.
    let mut l = orig[..9].to_vec();
    let v: serde_json::Value = serde_json::from_str(&orig[9]).unwrap();
    let prev: [u8; 64] = v["prev"].as_str().unwrap().as_bytes().try_into().unwrap();
    let mut buf = Vec::new();
    let body = serde_json::to_vec(&BodyOut::Request(&rec(99))).unwrap();
    encode_line(&mut buf, 10, &prev, &body);
    l.push(String::from_utf8(buf).unwrap().trim_end().to_owned());
    write_lines(dir, &l);
    assert_eq!(broken_at(dir).0, 10);

    // Deleted anchor.
    write_lines(dir, &orig);
    assert_eq!(verify(dir).unwrap().records, 10);
    fs::remove_file(dir.join(HEAD_FILE)).unwrap();
    assert_eq!(broken_at(dir).0, 0);
    assert!(AuditLog::open(dir).is_err());
}

/// Art 12.8: the anchor's two slots are overwritten in turn; a slot torn by a crash is
/// ignored while the other is intact, and an anchor with no valid slot is an error.
#[test]
fn head_anchor_slots_survive_a_torn_update() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let h = |c: u8| [c; 64];
    write_head(dir, 0, &ZERO_HASH).unwrap();
    let mut f = HeadFile::open(dir).unwrap();
    f.update(5, &h(b'a')).unwrap();
    f.update(9, &h(b'b')).unwrap();
    f.update(12, &h(b'c')).unwrap(); // overwrites the slot that held 5
    let bytes = fs::read(dir.join(HEAD_FILE)).unwrap();
    assert_eq!(bytes.len(), 2 * HEAD_SLOT);
    let head = read_head(dir).ok().flatten().unwrap();
    assert_eq!((head.seq, head.hash.as_bytes()), (12, &h(b'c')[..]));

    // Tear the newest slot (slot 0): the other one (seq 9) counts.
    let mut torn = bytes.clone();
    torn[20..40].fill(0);
    fs::write(dir.join(HEAD_FILE), &torn).unwrap();
    assert_eq!(read_head(dir).ok().flatten().unwrap().seq, 9);

    // Both slots spoiled: invalid, never "no anchor".
    torn[HEAD_SLOT + 20..HEAD_SLOT + 40].fill(0);
    fs::write(dir.join(HEAD_FILE), &torn).unwrap();
    assert!(matches!(read_head(dir), Err(HeadErr::Invalid(_))));

    // The single-line anchor of earlier versions still reads.
    let old = format!("{{\"seq\":7,\"hash\":\"{}\"}}\n", "d".repeat(64));
    fs::write(dir.join(HEAD_FILE), old).unwrap();
    assert_eq!(read_head(dir).ok().flatten().unwrap().seq, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_line_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_log(dir, 5).await;
    let good = fs::read(dir.join(LOG_FILE)).unwrap();

    // Partial write without a newline.
    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"seq\":6,\"prev\":\"ab");
    fs::write(dir.join(LOG_FILE), &torn).unwrap();
    assert_eq!(verify(dir).unwrap().records, 5); // in-progress write ignored
    let log = AuditLog::open(dir).unwrap();
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), good);
    assert_eq!(log.record(rec(6)).await.unwrap(), 6);
    log.close().await.unwrap();
    assert_eq!(verify(dir).unwrap().records, 6);

    // Garbage (e.g. zero-filled block) ending in a newline on the last line.
    let good = fs::read(dir.join(LOG_FILE)).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(b"\0\0\0\0{\"seq\n");
    fs::write(dir.join(LOG_FILE), &torn).unwrap();
    assert_eq!(broken_at(dir).0, 7);
    let log = AuditLog::open(dir).unwrap();
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), good);
    assert_eq!(log.record(rec(7)).await.unwrap(), 7);
    log.close().await.unwrap();
    assert_eq!(verify(dir).unwrap().records, 7);

    // A bad line in the middle is not repaired: open refuses, naming it.
    let mut l = lines(dir);
    l[2] = "{\"seq\":3,".into();
    write_lines(dir, &l);
    match AuditLog::open(dir) {
        Err(e @ AuditError::Corrupt { line: 3, .. }) => {
            assert!(e.to_string().contains("line 3"), "{e}")
        }
        other => panic!("expected Corrupt at line 3, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_and_joins_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open(dir).unwrap();
    let mk = |time: &str, patient: &str, physician: &str| RequestRecord {
        time: time.into(),
        patient: Some(patient.into()),
        physician: Some(physician.into()),
        ..rec(1)
    };
    let a = log
        .record(mk("2026-04-01T09:00:00+09:00", "P1", "DR1"))
        .await
        .unwrap();
    let b = log
        .record(mk("2026-04-01T23:30:00+09:00", "P2", "DR1"))
        .await
        .unwrap();
    let c = log
        .record(mk("2026-04-02T00:00:00+09:00", "P1", "DR2"))
        .await
        .unwrap();
    let d = log
        .record(mk("2026-04-03T01:00:00.5+09:00", "P1", "DR1"))
        .await
        .unwrap();
    log.outcome(
        a,
        Outcome {
            status: 200,
            bytes: 1234,
            duration_us: 50,
        },
    );
    log.outcome(
        c,
        Outcome {
            status: 502,
            bytes: 0,
            duration_us: 7,
        },
    );
    log.close().await.unwrap();

    let q = |f: QueryFilter| {
        query(dir, &f)
            .unwrap()
            .into_iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(QueryFilter::default()), vec![a, b, c, d]);
    assert_eq!(
        q(QueryFilter {
            patient: Some("P1".into()),
            ..Default::default()
        }),
        vec![a, c, d]
    );
    assert_eq!(
        q(QueryFilter {
            physician: Some("DR1".into()),
            ..Default::default()
        }),
        vec![a, b, d]
    );
    assert_eq!(
        q(QueryFilter {
            patient: Some("P1".into()),
            physician: Some("DR1".into()),
            ..Default::default()
        }),
        vec![a, d]
    );
    // Day of 2026-04-01 in Japan; `until` is exclusive.
    assert_eq!(
        q(QueryFilter {
            since: Some(parse_time_arg("2026-04-01").unwrap()),
            until: Some(parse_time_arg("2026-04-02").unwrap()),
            ..Default::default()
        }),
        vec![a, b]
    );
    // Instants compare across offsets: 2026-04-01T15:00Z = 2026-04-02T00:00+09:00.
    assert_eq!(
        q(QueryFilter {
            since: Some(parse_time_arg("2026-04-01T15:00:00Z").unwrap()),
            ..Default::default()
        }),
        vec![c, d]
    );

    let rows = query(dir, &QueryFilter::default()).unwrap();
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(rows[0].bytes, Some(1234));
    assert_eq!(rows[0].duration_us, Some(50));
    assert_eq!(rows[1].status, None);
    assert_eq!(rows[2].status, Some(502));
    let v = serde_json::to_value(&rows[0]).unwrap();
    for k in [
        "seq",
        "time",
        "decision",
        "reason",
        "physician",
        "terminal",
        "patient",
        "category",
        "path",
        "status",
        "bytes",
        "duration_us",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prefilter_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open(dir).unwrap();
    let mk = |patient: &str, physician: &str, path: &str| RequestRecord {
        patient: Some(patient.into()),
        physician: Some(physician.into()),
        path: path.into(),
        cn: Some("\"patient\":\"P1\"".into()),
        ..rec(1)
    };
    let a = log.record(mk("P1", "DR1", "/a")).await.unwrap();
    let b = log.record(mk("P10", "DR1", "/p/P1")).await.unwrap();
    let c = log
        .record(mk("P2", "DR10", "/x?\"patient\":\"P1\""))
        .await
        .unwrap();
    let d = log.record(mk("P1\"x", "DR1", "/q")).await.unwrap();
    for (rid, status) in [(c, 404), (a, 200)] {
        log.outcome(
            rid,
            Outcome {
                status,
                bytes: 1,
                duration_us: 1,
            },
        );
    }
    log.close().await.unwrap();
    let q = |patient: Option<&str>, physician: Option<&str>| {
        query(
            dir,
            &QueryFilter {
                patient: patient.map(Into::into),
                physician: physician.map(Into::into),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let rows = q(Some("P1"), None);
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![a]);
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(q(Some("P1\"x"), None)[0].seq, d);
    assert_eq!(
        q(None, Some("DR1"))
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![a, b, d]
    );
    let rows = q(Some("P2"), Some("DR10"));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].seq, rows[0].status), (c, Some(404)));
    assert!(q(Some("P2"), Some("DR1")).is_empty());
    // The unparsed readers agree with the writer's format.
    let lines = lines(dir);
    assert_eq!(written_kind(lines[0].as_bytes()), Some(&b"request"[..]));
    assert_eq!(written_kind(lines[4].as_bytes()), Some(&b"outcome"[..]));
    assert_eq!(outcome_rid(lines[4].as_bytes()), Some(c));
    assert_eq!(outcome_rid(lines[0].as_bytes()), None);
}

#[test]
fn time_args() {
    let t = parse_time_arg("2026-04-01").unwrap();
    assert_eq!(t.offset(), JST);
    assert_eq!(t, parse_time_arg("2026-03-31T15:00:00Z").unwrap());
    assert!(parse_time_arg("yesterday").is_err());
    assert!(parse_time_arg("2026-13-01").is_err());
    let now = now_jst();
    assert!(now.ends_with("+09:00"), "{now}");
    assert!(parse_time_arg(&now).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open(dir).unwrap();
    let r1 = log.record(rec(1)).await.unwrap();
    assert_eq!(r1, 1);

    log.inject_failure(true);
    // Outcome of an already-forwarded request, queued while the disk is "full".
    log.outcome(
        r1,
        Outcome {
            status: 200,
            bytes: 10,
            duration_us: 3,
        },
    );
    match log.record(rec(2)).await {
        Err(AuditError::WriteFailed(msg)) => assert!(msg.contains("injected"), "{msg}"),
        other => panic!("expected WriteFailed, got {other:?}"),
    }
    assert!(log.failed());
    assert!(log.record(rec(3)).await.is_err());
    // The partial write was rolled back: the log still verifies.
    assert_eq!(verify(dir).unwrap().records, 1);

    log.inject_failure(false);
    let r4 = log.record(rec(4)).await.unwrap();
    assert!(!log.failed());
    // The carried outcome line was written first (seq 2), then the request.
    assert_eq!(r4, 3);
    log.close().await.unwrap();
    assert_eq!(verify(dir).unwrap().records, 3);
    let rows = query(dir, &QueryFilter::default()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(rows[1].request.path, "/emr/patient/4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writer_retries_carried_outcomes_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open(dir).unwrap();
    let r1 = log.record(rec(1)).await.unwrap();
    log.inject_failure(true);
    log.outcome(
        r1,
        Outcome {
            status: 200,
            bytes: 1,
            duration_us: 1,
        },
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(log.failed());
    log.inject_failure(false);
    for _ in 0..50 {
        if !log.failed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!log.failed());
    assert_eq!(log.written(), 2);
    log.close().await.unwrap();
    assert_eq!(verify(dir).unwrap().records, 2);
}

#[test]
fn handle_and_futures_are_send_sync() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<AuditLog>();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = AuditLog::open(tmp.path()).unwrap();
        let fut = log.record(rec(1));
        send(&fut);
        fut.await.unwrap();
        log.close().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_appending() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let log = AuditLog::open(&dir).unwrap();
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..2000 {
                let rid = log.record(rec(i)).await.unwrap();
                log.outcome(
                    rid,
                    Outcome {
                        status: 200,
                        bytes: 1,
                        duration_us: 1,
                    },
                );
            }
        })
    };
    let checker = tokio::task::spawn_blocking(move || {
        let mut last = 0;
        for _ in 0..20 {
            let r = verify(&dir).unwrap();
            assert!(r.records >= last);
            last = r.records;
        }
    });
    writer.await.unwrap();
    checker.await.unwrap();
    log.close().await.unwrap();
    assert_eq!(verify(tmp.path()).unwrap().records, 4000);
}

#[test]
fn recorded_heads_parse_strictly() {
    let h = "ab".repeat(32);
    let r: RecordedHead = format!("12:{h}").parse().unwrap();
    assert_eq!(r.seq, Some(12));
    assert_eq!(r.to_string(), format!("12:{h}"));
    let upper: RecordedHead = h.to_uppercase().parse().unwrap();
    assert_eq!(upper.seq, None);
    assert_eq!(upper.hash, r.hash);
    for bad in [
        "",
        "12:",
        "x:00",
        &format!("-1:{h}"),
        &format!("12:{}", &h[1..]),
        &format!("{h}0"),
        &format!("12:{}zz", &h[2..]),
    ] {
        assert!(bad.parse::<RecordedHead>().is_err(), "{bad:?} accepted");
    }
}

/// A line nobody waits for (an outcome) is held back for the next record, but never longer
/// than the writer's hold: with no further traffic it is still written and synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_outcome_is_written_without_further_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = AuditLog::open(&dir).unwrap();
    let rid = log.record(rec(1)).await.unwrap();
    assert_eq!(log.written(), 1);
    let ok = Outcome {
        status: 200,
        bytes: 5,
        duration_us: 10,
    };
    log.outcome(rid, ok);
    let start = std::time::Instant::now();
    while log.written() < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "the held outcome line was not written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // A held line keeps its place: it precedes a record that arrives after it.
    log.outcome(rid, ok);
    assert_eq!(log.record(rec(2)).await.unwrap(), 4);
    log.close().await.unwrap();
    assert_eq!(log.written(), 4);
    assert_eq!(verify(&dir).unwrap().records, 4);
}

/// The writer grows the file with zeros ahead of its lines (so a sync writes no inode):
/// while it runs, readers stop at the zeros; a copy taken then (the state a crash leaves)
/// verifies and reopens with every synced line, the zeros cut off; a clean stop leaves
/// plain JSON Lines; lines after zeros (a batch that only partly reached the disk) are cut
/// by recovery and reported by verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_tail_written_ahead_is_read_past_and_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = AuditLog::open(&dir).unwrap();
    for i in 1..=3 {
        assert_eq!(log.record(rec(i)).await.unwrap(), i);
    }
    let running = fs::read(dir.join(LOG_FILE)).unwrap();
    assert_eq!(
        running.len() as u64,
        super::writer::CHUNK,
        "grown by one chunk"
    );
    let end = running.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert!(running[end..].iter().all(|&b| b == 0));
    assert_eq!(verify(&dir).unwrap().records, 3);
    assert_eq!(query(&dir, &QueryFilter::default()).unwrap().len(), 3);

    // The state a crash leaves: the lines, then zeros.
    let crashed = tmp.path().join("crashed");
    fs::create_dir(&crashed).unwrap();
    for f in fs::read_dir(&dir).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), crashed.join(f.file_name())).unwrap();
    }
    assert_eq!(verify(&crashed).unwrap().records, 3);
    let again = AuditLog::open(&crashed).unwrap();
    assert_eq!(fs::read(crashed.join(LOG_FILE)).unwrap(), running[..end]);
    assert_eq!(again.record(rec(4)).await.unwrap(), 4);
    again.close().await.unwrap();
    assert_eq!(verify(&crashed).unwrap().records, 4);

    // A clean stop cuts the zeros.
    log.close().await.unwrap();
    assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), running[..end]);

    // Zeros, then a line that did reach the disk: verify names it, recovery cuts it.
    let mut holed = running[..end].to_vec();
    let last_start = holed[..end - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let last = holed[last_start..].to_vec();
    holed.truncate(last_start);
    holed.extend(std::iter::repeat_n(0u8, 4096));
    holed.extend_from_slice(&last);
    fs::write(dir.join(LOG_FILE), &holed).unwrap();
    assert!(broken_at(&dir).2.contains("zero bytes"));
}
