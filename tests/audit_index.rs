//! The per-patient audit index (art 12.8: access history queryable) under `kill -9`: the
//! gateway is killed while requests for several patients run; `audit query --patient` (through
//! the index, whose watermark the crash left behind) must print exactly what a scan of the whole
//! log prints, before and after a restart (which checks and extends the index), and the index
//! must answer without falling back to the full scan.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const LOAD_LIMIT: Duration = Duration::from_secs(5);
const MAX_REQUESTS: usize = 3000;
const KILL_AT_ANSWERS: usize = 600;
const KILL_AFTER: Duration = Duration::from_secs(3);
/// P003 has no consent: its requests are refused (request lines without outcomes).
const PATIENTS: [&str; 3] = ["P001", "P002", "P003"];
const FALLBACK: &str = "scanning the whole log";

/// `audit query --patient P --json` through the index and with `--full-scan`: both outputs.
fn both(gate: &Gate, patient: &str) -> (String, String, String) {
    let indexed = gate.cli(&["audit", "query", "--patient", patient, "--json"]);
    assert!(indexed.status.success(), "{}", show(&indexed));
    let full = gate.ok(&[
        "audit",
        "query",
        "--patient",
        patient,
        "--json",
        "--full-scan",
    ]);
    (
        String::from_utf8(indexed.stdout).unwrap(),
        full,
        String::from_utf8(indexed.stderr).unwrap(),
    )
}

/// The index's watermark (lines covered, from its header) and the log's line count.
fn coverage(gate: &Gate) -> (u64, u64) {
    let idx = std::fs::read(gate.audit_dir().join("audit.idx")).unwrap();
    let covered = u64::from_le_bytes(idx[8..16].try_into().unwrap());
    let log = std::fs::read(gate.audit_dir().join("audit.log")).unwrap();
    (covered, log.iter().filter(|&&b| b == b'\n').count() as u64)
}

fn same_answers(gate: &Gate, when: &str) -> usize {
    let mut rows = 0;
    for p in PATIENTS {
        let (indexed, full, stderr) = both(gate, p);
        assert_eq!(indexed, full, "{when}: --patient {p} through the index");
        assert!(
            !stderr.contains(FALLBACK),
            "{when}: the index should answer --patient {p}: {stderr}"
        );
        rows += full.lines().count();
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_index_answers_like_a_full_scan_after_kill_9_and_restart() {
    let emr = SampleEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.terminal_credential_only();
    // Every refusal (P003 has no consent) is written one by one: this test is about the index,
    // not the refusal audit's rate limit (issue 11 item 8).
    gate.audit_every_refusal();
    gate.start();
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    gate.grant("P002", today_jst());
    let cfg = gate.client(&pc1);

    let load = KillLoad {
        clients: 4,
        limit: LOAD_LIMIT,
        max_requests: MAX_REQUESTS,
        kill_at_answers: KILL_AT_ANSWERS,
        kill_after: KILL_AFTER,
    };
    // Any answer counts: P003 is refused by design.
    let run = load_then_kill9(
        &mut gate,
        cfg,
        load,
        |i, n| format!("/patients/{}/labs", PATIENTS[(i + n) % PATIENTS.len()]),
        |_| {},
    )
    .await;
    let answered = run.answered;
    assert!(answered > 0, "the load produced no answer");
    let (covered, lines) = coverage(&gate);
    eprintln!("after kill -9: {answered} answered; index watermark {covered} of {lines} log lines");
    assert!(covered <= lines);

    // As the crash left it: the index's watermark may lag; its tail is scanned.
    let rows = same_answers(&gate, "after kill -9");
    assert!(
        rows >= answered,
        "{answered} answered but {rows} per-patient rows"
    );

    // Restart: open checks the index against the log and extends it; more traffic.
    gate.start();
    for p in PATIENTS {
        get_once(
            gate.port,
            gate.client(&pc1),
            &format!("/patients/{p}/notes"),
        )
        .await
        .unwrap();
    }
    let v = gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify while serving: {}", show(&v));
    same_answers(&gate, "while serving after the restart");

    assert!(gate.stop(), "graceful stop:\n{}", gate.log());
    let after = same_answers(&gate, "after a graceful stop");
    let (covered, lines) = coverage(&gate);
    assert_eq!(
        covered, lines,
        "a graceful stop leaves the whole log indexed"
    );
    assert!(after >= rows + PATIENTS.len());
    let v = gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify after stop: {}", show(&v));

    // The index deleted: the query says so and scans the whole log, same answer.
    std::fs::remove_file(gate.audit_dir().join("audit.idx")).unwrap();
    let (indexed, full, stderr) = both(&gate, "P001");
    assert_eq!(indexed, full);
    assert!(stderr.contains(FALLBACK), "{stderr}");
}
