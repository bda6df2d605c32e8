//! Durability under `kill -9` (art 12.8: every access recorded; art 3, 6.2: the registries
//! survive): the gateway is killed while allowed requests are running; after a restart on the
//! same directory the store opens, the audit chain verifies, every answered request has its
//! allowed audit record, and the registry still holds the physician.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

/// Client tasks running the load.
const CLIENTS: usize = 4;
/// Upper bounds of the load: time and requests.
const LOAD_LIMIT: Duration = Duration::from_secs(5);
const MAX_REQUESTS: usize = 2000;
/// Kill once this many requests were answered (or after KILL_AFTER, whichever is first).
const KILL_AT_ANSWERS: usize = 400;
const KILL_AFTER: Duration = Duration::from_secs(3);

/// Art 12.8: every response a client received has its durable allowed audit record, even when
/// the gateway is killed with SIGKILL right after — checked request by request (each request
/// has its own path, and the record of each answered one is in the log). The gateway forwards a
/// request while its record is being synced and holds the response until it is durable
/// (issue 16), so the log may also hold records of requests whose response nobody received;
/// never the reverse. The restarted gateway verifies the chain, opens the registry (art 3, 6.2)
/// and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_kill_9_under_load_loses_no_audited_request() {
    let emr = SampleEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.terminal_credential_only();
    gate.start();
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    let cfg = gate.client(&pc1);

    // Let the load run, then SIGKILL the gateway in the middle of it.
    let load = KillLoad {
        clients: CLIENTS,
        limit: LOAD_LIMIT,
        max_requests: MAX_REQUESTS,
        kill_at_answers: KILL_AT_ANSWERS,
        kill_after: KILL_AFTER,
    };
    let run = load_then_kill9(
        &mut gate,
        cfg,
        load,
        |i, n| {
            format!(
                "/patients/P001/{}?req={i}-{n}",
                ["labs", "notes", "images", "basic"][i % 4]
            )
        },
        |r| assert_eq!(r.status, 200, "unexpected answer under load: {r:?}"),
    )
    .await;
    let answered = run.answered;
    assert!(answered > 0, "the load produced no answered request");
    eprintln!(
        "killed after {:?}: {answered} answered of {} sent",
        run.elapsed, run.sent
    );

    // Before any restart: the chain as the crash left it verifies, and every 200 is there.
    let v = gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify after kill -9: {}", show(&v));
    let recorded: std::collections::HashSet<String> = gate
        .audit_rows()
        .iter()
        .filter(|r| r["ingress"] == "mtls" && r["patient"] == "P001" && r["decision"] == "allow")
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect();
    assert_eq!(run.answered_paths.len(), answered);
    let missing: Vec<&String> = run
        .answered_paths
        .iter()
        .filter(|p| !recorded.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {answered} responses received have no durable allowed record, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );

    // Restart on the same directory: store and audit open, the gateway serves.
    gate.start();
    let r = get_once(gate.port, gate.client(&pc1), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "after restart: {r:?}");
    let v = gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify after restart: {}", show(&v));

    // The registry survived.
    let list: serde_json::Value =
        serde_json::from_str(&gate.ok(&["physician", "list", "--json"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "dr1" && p["suspended"].is_null()),
        "physician dr1 lost: {list}"
    );
    let terms: serde_json::Value =
        serde_json::from_str(&gate.ok(&["terminal", "list", "--json"])).unwrap();
    assert!(
        terms.as_array().unwrap().iter().any(|t| t["name"] == "pc1"),
        "terminal pc1 lost: {terms}"
    );
    gate.ok(&["consent", "show", "--patient", "P001", "--json"]);

    // A graceful stop now leaves a chain that verifies.
    assert!(gate.stop(), "graceful stop:\n{}", gate.log());
    let v = gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify after stop: {}", show(&v));
}
