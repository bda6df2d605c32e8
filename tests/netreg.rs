//! Issue 14 (registry side): Seiyo City Hospital and Nomura Clinic as one network on one real
//! etcd cluster (tests/common/etcd.rs), one prefix. The hospital's site directory made by
//! `init`; the clinic's is its twin (one CA: registered once) with `[site] id` changed and its
//! own sample EMR. Patients linked across the two EMRs, consent and withdrawal regional,
//! `last_view` counted at either site, the purge, and the audit heads the network witnesses.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::*;

const HOSPITAL: &str = "seiyo-hospital";
const CLINIC: &str = "nomura-clinic";

/// The two sites of the network on one cluster: `a` the hospital, `b` the clinic.
struct Net {
    emr_a: RecordingEmr,
    emr_b: RecordingEmr,
    a: Gate,
    b: Gate,
    _cluster: EtcdCluster,
}

fn network() -> Net {
    let cluster = EtcdCluster::start(3);
    let emr_a = RecordingEmr::start();
    let emr_b = RecordingEmr::start();
    let a = Gate::init_site(HOSPITAL, emr_a.port);
    a.terminal_credential_only();
    let b = a.twin();
    // The clinic: its own site id and its own EMR; the hospital's CA (registered once).
    let text = std::fs::read_to_string(&b.config).unwrap();
    let text = text
        .replacen(
            &format!("id = \"{HOSPITAL}\""),
            &format!("id = \"{CLINIC}\""),
            1,
        )
        .replace(
            &format!("127.0.0.1:{}", emr_a.port),
            &format!("127.0.0.1:{}", emr_b.port),
        );
    assert!(text.contains(&format!("id = \"{CLINIC}\"")), "{text}");
    std::fs::write(&b.config, text).unwrap();
    let registry = cluster.registry_toml("/seibo-net-netreg/", 15);
    for g in [&a, &b] {
        cluster.write_credentials(g.dir.path());
        g.append_config(&registry);
    }
    Net {
        emr_a,
        emr_b,
        a,
        b,
        _cluster: cluster,
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `consent grant` at `gate` for its patient `patient`, with `links`, published `published`.
fn grant_linked(gate: &Gate, patient: &str, links: &[&str], published: time::Date) {
    let out = grant_cmd(gate, patient, links, published);
    assert!(out.status.success(), "grant {patient}: {}", show(&out));
}

fn grant_cmd(
    gate: &Gate,
    patient: &str,
    links: &[&str],
    published: time::Date,
) -> std::process::Output {
    let published = ymd(published);
    let form = format!("F6-{patient}");
    let mut args = vec![
        "consent",
        "grant",
        "--patient",
        patient,
        "--by",
        "patient",
        "--published",
        &published,
        "--form-ref",
        &form,
    ];
    for l in links {
        args.extend_from_slice(&["--link", l]);
    }
    gate.cli(&args)
}

/// Polls `f` (bounded by `limit`, no fixed sleep) until it returns true.
async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// Art 8.1, 9.3, 9.4 (issue 14): a consent granted at the clinic under its EMR id with a link
/// to the hospital's id is allowed at the hospital through the hospital's own id; an unlinked
/// id is refused at both; a conflicting link is refused with a clear error (one id per site,
/// one patient per id); `patient link` adds a link later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_4_consent_at_the_clinic_with_links_holds_at_the_hospital_by_its_own_id() {
    let mut n = network();
    n.a.start();
    n.b.start();
    // Registered once, at the hospital.
    n.a.add_physician("dr1");
    let pc1 = n.a.add_terminal("dr1", "pc1");
    let today = today_jst();
    grant_linked(&n.b, "N-778", &["seiyo-hospital:0012345"], today);

    let at =
        async |g: &Gate, path: &str| get_once(g.port, g.client(&pc1), path).await.unwrap().status;
    // The consent reaches the hospital's copy through the watch: poll, bounded.
    until(
        Duration::from_secs(10),
        "the hospital sees the clinic's consent",
        async || at(&n.a, "/patients/0012345/labs").await == 200,
    )
    .await;
    assert_eq!(
        at(&n.b, "/patients/N-778/labs").await,
        200,
        "the clinic, its own id"
    );
    // Each EMR saw its own id of the patient.
    let seen_a = n.emr_a.seen();
    assert_eq!(seen_a.last().unwrap().target, "/patients/0012345/labs");
    assert_eq!(seen_a.last().unwrap().one("x-seibo-patient"), "0012345");
    let seen_b = n.emr_b.seen();
    assert_eq!(seen_b.last().unwrap().one("x-seibo-patient"), "N-778");
    // The clinic's id means nothing at the hospital, nor the hospital's at the clinic.
    assert_eq!(at(&n.a, "/patients/N-778/labs").await, 403);
    assert_eq!(at(&n.b, "/patients/0012345/labs").await, 403);
    // An unlinked id is refused.
    assert_eq!(at(&n.a, "/patients/0099999/labs").await, 403);
    // `consent show` at each site through its own id names both links.
    let show_a =
        n.a.ok(&["consent", "show", "--patient", "0012345", "--json"]);
    assert!(show_a.contains("nomura-clinic:N-778"), "{show_a}");
    assert!(show_a.contains("seiyo-hospital:0012345"), "{show_a}");

    // A second hospital id for the same patient: refused (one id per site).
    let out = n.b.cli(&[
        "patient",
        "link",
        "--patient",
        "N-778",
        "--link",
        "seiyo-hospital:0054321",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("already linked at site seiyo-hospital as 0012345"),
        "{}",
        show(&out)
    );
    // Another hospital patient claiming the clinic's id N-778: refused (one patient per id).
    let out = grant_cmd(&n.a, "0077777", &["nomura-clinic:N-778"], today);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("link nomura-clinic:N-778 already names another patient"),
        "{}",
        show(&out)
    );
    assert_eq!(
        at(&n.a, "/patients/0077777/labs").await,
        403,
        "nothing registered"
    );
    // A malformed link is a usage error before anything is written.
    let out = grant_cmd(&n.a, "0077777", &["nomura clinic/N-778"], today);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("SITE:ID"), "{}", show(&out));

    // `patient link` later: a hospital patient granted alone, linked afterwards to the clinic.
    grant_linked(&n.a, "0023456", &[], today);
    n.a.ok(&[
        "patient",
        "link",
        "--patient",
        "0023456",
        "--link",
        "nomura-clinic:N-900",
    ]);
    until(
        Duration::from_secs(10),
        "the clinic sees the later link",
        async || at(&n.b, "/patients/N-900/notes").await == 200,
    )
    .await;
}

/// Art 9.2, 9.4 (issue 14): a withdrawal at the hospital, under the hospital's id, refuses at
/// the clinic under the clinic's id at the next request on an already-open connection; the
/// registry forgets both links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_withdrawal_at_the_hospital_refuses_at_the_clinic_on_an_open_connection() {
    let mut n = network();
    n.a.start();
    n.b.start();
    n.a.add_physician("dr1");
    let pc1 = n.a.add_terminal("dr1", "pc1");
    grant_linked(&n.b, "N-778", &["seiyo-hospital:0012345"], today_jst());
    let mut conn = Conn::open(n.b.port, n.b.client(&pc1)).await.unwrap();
    assert_eq!(conn.get("/patients/N-778/labs").await.unwrap().status, 200);
    until(
        Duration::from_secs(10),
        "the hospital sees the consent",
        async || {
            n.a.cli(&["consent", "show", "--patient", "0012345"])
                .status
                .success()
        },
    )
    .await;
    n.a.ok(&[
        "consent",
        "withdraw",
        "--patient",
        "0012345",
        "--form-ref",
        "F7-1",
    ]);
    let start = Instant::now();
    loop {
        let r = conn.get("/patients/N-778/labs").await.unwrap();
        if r.status == 403 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the clinic still allows after the hospital's withdrawal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "withdrawal propagated to the clinic's open connection in {:?}",
        start.elapsed()
    );
    // Both ids are forgotten: a new grant at the clinic for N-778 is a new consent.
    assert!(!n
        .b
        .cli(&["consent", "show", "--patient", "N-778"])
        .status
        .success());
    grant_linked(&n.b, "N-778", &["seiyo-hospital:0012345"], today_jst());
}

/// `serve` on a clock stopped at `day` (noon, Japan), through the hidden, test-only flag.
fn start_at(gate: &mut Gate, day: time::Date) {
    let mut c = Command::new(BIN);
    c.arg("serve")
        .arg("--config")
        .arg(&gate.config)
        .args(["--test-clock", &format!("{}T12:00:00+09:00", ymd(day))])
        .env(
            seibo_gate::ops::clock::TEST_CLOCK_ENV,
            seibo_gate::ops::clock::TEST_CLOCK_CONSENT,
        );
    gate.start_command(c);
}

fn purge_rows(gate: &Gate) -> Vec<serde_json::Value> {
    gate.audit_rows()
        .into_iter()
        .filter(|r| r["ingress"] == "admin" && r["path"] == "patient-purge")
        .collect()
}

/// Art 8.3, 11 (issue 14): `last_view` is the latest view at any site. A view at the clinic
/// on day 998 (after a view at the hospital on day 0) extends the window at the hospital: on
/// day 998 + 999 the hospital's daily purge keeps the patient; on day 998 + 1000 it removes
/// it, and its audit record names the patient (the hospital's id and every linked id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_3_and_11_a_view_at_the_clinic_extends_the_window_at_the_hospital_and_the_purge_names_the_patient(
) {
    let mut n = network();
    let day0 = today_jst() - time::Duration::days(2000);
    start_at(&mut n.a, day0);
    n.a.add_physician("dr1");
    let pc1 = n.a.add_terminal("dr1", "pc1");
    grant_linked(&n.a, "0012345", &["nomura-clinic:N-778"], day0);
    let r = get_once(n.a.port, n.a.client(&pc1), "/patients/0012345/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "day 0 at the hospital: {r:?}");
    assert!(n.a.stop(), "{}", n.a.log());

    // Day 998, at the clinic, under the clinic's id.
    let day998 = day0 + time::Duration::days(998);
    start_at(&mut n.b, day998);
    let r = get_once(n.b.port, n.b.client(&pc1), "/patients/N-778/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "day 998 at the clinic: {r:?}");
    // The view's last_view write runs beside the request: poll the regional record.
    let start = Instant::now();
    loop {
        let c = n.b.ok(&["consent", "show", "--patient", "N-778", "--json"]);
        if c.contains(&format!("\"last_view\":\"{}\"", ymd(day998))) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(n.b.stop(), "{}", n.b.log());

    // Day 998 + 999 at the hospital: kept (the hospital itself last saw it on day 0).
    start_at(&mut n.a, day998 + time::Duration::days(999));
    let c =
        n.a.cli(&["consent", "show", "--patient", "0012345", "--json"]);
    assert!(c.status.success(), "kept on day 998 + 999: {}", show(&c));
    assert!(
        purge_rows(&n.a).iter().all(|r| r["patient"] != "0012345"),
        "{:#?}",
        purge_rows(&n.a)
    );
    assert!(n.a.stop(), "{}", n.a.log());

    // Day 998 + 1000: the start-up purge removes it, its audit record naming the patient.
    start_at(&mut n.a, day998 + time::Duration::days(1000));
    let start = Instant::now();
    let row = loop {
        if let Some(r) = purge_rows(&n.a)
            .into_iter()
            .find(|r| r["patient"] == "0012345" && r["status"].is_u64())
        {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no purge record: {:#?}\nconsent: {}\n{}",
            purge_rows(&n.a),
            show(&n.a.cli(&["consent", "show", "--patient", "0012345", "--json"])),
            n.a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["status"], 200, "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("seiyo-hospital:0012345") && reason.contains("nomura-clinic:N-778"),
        "the purge record names the patient at both sites: {row}"
    );
    assert!(!n
        .a
        .cli(&["consent", "show", "--patient", "0012345"])
        .status
        .success());
    assert!(!n
        .a
        .cli(&["consent", "show", "--patient", "N-778"])
        .status
        .success());
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    hex::encode(ctx.finish().as_ref())
}

/// What someone who can write the state directory does: rewrites the log from `lines`,
/// recomputing every hash, and the head anchor to match.
fn forge_log(dir: &Path, lines: &[String]) {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let seq = i + 1;
        let body_start = line.find(",\"kind\"").unwrap();
        let hash_at = line.rfind(",\"hash\":\"").unwrap();
        let body = &line[body_start + 1..hash_at];
        let canon = format!("{{\"seq\":{seq},\"prev\":\"{prev}\",{body}}}");
        let hash = sha256_hex(&[prev.as_bytes(), canon.as_bytes()]);
        out.push_str(&canon[..canon.len() - 1]);
        out.push_str(&format!(",\"hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    std::fs::write(dir.join("audit.log"), out).unwrap();
    let mut slot = format!("{{\"seq\":{},\"hash\":\"{prev}\"}}", lines.len()).into_bytes();
    slot.resize(127, b' ');
    slot.push(b'\n');
    let mut head = slot.clone();
    head.extend_from_slice(&slot);
    std::fs::write(dir.join("audit.head"), head).unwrap();
}

/// Art 12.8 (issue 14): each gateway publishes its audit chain head to the regional registry;
/// a log rewritten on one machine — every hash, the head file and the index recomputed — passes
/// the local checks but fails `audit verify` against the head the network holds, which names
/// the mismatch. The other site's log still verifies, witnessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_a_rewritten_audit_log_fails_verify_against_the_head_the_network_holds() {
    let mut n = network();
    n.a.start();
    n.b.start();
    n.a.add_physician("dr1");
    let pc1 = n.a.add_terminal("dr1", "pc1");
    grant_linked(&n.a, "0012345", &["nomura-clinic:N-778"], today_jst());
    for _ in 0..3 {
        let r = get_once(n.a.port, n.a.client(&pc1), "/patients/0012345/labs")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    n.a.request_rows_settled(3);
    // Bounded poll: the hospital's published head catches up with its log.
    let start = Instant::now();
    loop {
        let head = n.a.ok(&["audit", "head"]).trim().to_string();
        let v = n.a.cli(&["audit", "verify"]);
        if v.status.success() && stdout(&v).contains(&format!("contains the head {head} ")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{}", show(&v));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(n.a.stop(), "{}", n.a.log());

    let dir = n.a.audit_dir();
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.replace("\"physician\":\"dr1\"", "\"physician\":\"dr9\""))
        .collect();
    assert!(lines.iter().any(|l| l.contains("dr9")));
    forge_log(&dir, &lines);
    std::fs::remove_file(dir.join("audit.idx")).unwrap();
    // The local checks alone pass once the index is rebuilt: the forgery is consistent.
    let r = n.a.cli(&["audit", "verify", "--rebuild-index"]);
    assert!(stdout(&r).contains("audit log intact"), "{}", show(&r));
    let v = n.a.cli(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", show(&v));
    let e = stderr(&v);
    assert!(
        e.contains("REWRITTEN") && e.contains("the head the network holds for site seiyo-hospital"),
        "{}",
        show(&v)
    );
    assert!(
        e.contains("not the recorded"),
        "names the mismatched line: {}",
        show(&v)
    );
    // The restarted gateway does not vouch for the forged log: the network keeps the old head.
    n.a.start();
    std::thread::sleep(Duration::from_secs(3));
    let v = n.a.cli(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", show(&v));
    assert!(stderr(&v).contains("REWRITTEN"), "{}", show(&v));
    // The clinic's log, untouched, is witnessed.
    let start = Instant::now();
    loop {
        let v = n.b.cli(&["audit", "verify"]);
        if v.status.success() && stdout(&v).contains("witnessed by the network") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{}", show(&v));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn admin_reason(gate: &Gate, op: &str, who: &str) -> String {
    gate.audit_rows()
        .into_iter()
        .filter(|r| r["ingress"] == "admin" && r["path"] == op)
        .filter(|r| r["patient"] == who || r["physician"] == who)
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .next_back()
        .unwrap_or_else(|| panic!("no {op} record for {who}"))
}

/// Art 3, 4, 7, 8.1, 8.3, 9.1–9.3, 11 (issue 14): the paperwork recorded — registration
/// (form 3), explanation and consent (forms 5 and 6, with the physician who explained),
/// withdrawal (form 7, with who withdrew), suspension and deregistration (form 9), the site
/// that received the consent (art 9.3), the relation of a relative checked (art 8.1), and a
/// later "do not extend" request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_1_and_9_3_the_paperwork_is_recorded_and_the_relation_checked() {
    let mut n = network();
    n.a.start();
    n.a.ok(&[
        "physician",
        "add",
        "--id",
        "dr1",
        "--name",
        "Dr One",
        "--form-ref",
        "F3-1",
    ]);
    assert_eq!(admin_reason(&n.a, "physician-add", "dr1"), "form 3 F3-1");
    let published = ymd(today_jst());
    let grant = |patient: &str, rel: &str| {
        n.a.cli(&[
            "consent",
            "grant",
            "--patient",
            patient,
            "--by",
            "relative",
            "--relation",
            rel,
            "--published",
            &published,
            "--form-ref",
            "F6-1",
            "--explanation-form",
            "F5-1",
            "--explained-by",
            "dr1",
            "--link",
            "nomura-clinic:N-1",
        ])
    };
    // Art 8.1 boundaries at the admin command: blood 7th degree and in-law 4th refused.
    for bad in ["blood:7", "in-law:4", "neighbour"] {
        let out = grant("0000001", bad);
        assert!(!out.status.success(), "{bad}: {}", show(&out));
        assert!(stderr(&out).contains("art 8.1"), "{bad}: {}", show(&out));
    }
    let out = grant("0000001", "blood:6");
    assert!(out.status.success(), "{}", show(&out));
    let c: serde_json::Value =
        serde_json::from_str(&n.a.ok(&["consent", "show", "--patient", "0000001", "--json"]))
            .unwrap();
    let c = if c.get("consent").is_some() {
        c["consent"].clone()
    } else {
        c
    };
    assert_eq!(c["site"], HOSPITAL, "art 9.3: the receiving site: {c}");
    assert_eq!(c["explanation"]["form_ref"], "F5-1", "{c}");
    assert_eq!(c["explanation"]["physician"], "dr1", "{c}");
    let reason = admin_reason(&n.a, "consent-grant", "0000001");
    assert!(
        reason.contains("explained by dr1 (form 5 F5-1)") && reason.contains("nomura-clinic:N-1"),
        "{reason}"
    );
    // A later "do not extend" request.
    n.a.ok(&[
        "consent",
        "no-extension",
        "--patient",
        "0000001",
        "--form-ref",
        "R-1",
    ]);
    let shown =
        n.a.ok(&["consent", "show", "--patient", "0000001", "--json"]);
    assert!(shown.contains("\"no_extension\":true"), "{shown}");
    // Withdrawal by a relative whose relation is out of range: refused; by a spouse: recorded.
    let out = n.a.cli(&[
        "consent",
        "withdraw",
        "--patient",
        "0000001",
        "--form-ref",
        "F7-1",
        "--by",
        "relative",
        "--relation",
        "in-law:4",
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    n.a.ok(&[
        "consent",
        "withdraw",
        "--patient",
        "0000001",
        "--form-ref",
        "F7-1",
        "--by",
        "relative",
        "--relation",
        "spouse",
    ]);
    assert_eq!(
        admin_reason(&n.a, "consent-withdraw", "0000001"),
        "form 7 F7-1 by relative (spouse)"
    );
    // Suspension and deregistration (form 9).
    n.a.ok(&[
        "physician",
        "suspend",
        "--id",
        "dr1",
        "--reason",
        "request",
        "--form-ref",
        "F9-1",
    ]);
    assert_eq!(
        admin_reason(&n.a, "physician-suspend", "dr1"),
        "request (form 9 F9-1)"
    );
    n.a.ok(&["physician", "delete", "--id", "dr1", "--form-ref", "F9-2"]);
    assert_eq!(admin_reason(&n.a, "physician-delete", "dr1"), "form 9 F9-2");
}
