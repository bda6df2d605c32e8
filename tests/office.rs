//! The liaison office's console (issue 15; rules art 2, 6.2, 9.1–9.3, 11, 12.8, 13.1) driven
//! through the real binary: `seibo-gate staff add` makes the staff accounts and certificates,
//! `serve` runs the gateway with `[office]` on loopback beside the sample EMR, and
//!
//! * `tests/browser/office.mjs` drives Debian's chromium with playwright-core as a clerk would
//!   (staff `.p12` imported with pk12util), and as the physician the clerk registered (the
//!   `.p12` the console handed out, in a second browser profile);
//! * curl checks what a browser cannot show: certificates of the wrong kind, cross-site
//!   posts, the allow-list at accept, the lockout.
//!
//! The tools come from `scripts/install-browser-tools`; without them the browser test fails,
//! it never skips. Screenshots of every page are kept under a directory printed by the test.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{curl, free_port, today_jst, ymd, CurlReply, Gate, SampleEmr, Terminal};

/// Longest run of the whole browser script.
const BROWSER_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_tools() {
    let hint = "run scripts/install-browser-tools (chromium, libnss3-tools, fonts-noto-cjk, \
                nodejs, npm, and tests/browser/node_modules)";
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: {hint}"
    );
    for tool in ["pk12util", "certutil", "node"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: {hint}");
    }
    let pw = repo().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(pw.exists(), "{} is missing: {hint}", pw.display());
}

/// The value after `marker` on the line that has it (`...: VALUE`).
fn printed(stdout: &str, marker: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(marker))
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {marker:?} in {stdout}"))
}

/// A staff account as `staff add` printed it.
struct StaffAccount {
    id: String,
    cert: Terminal,
    p12: PathBuf,
    p12_password: String,
    otp: String,
}

fn staff_add(gate: &Gate, id: &str, role: &str) -> StaffAccount {
    let dir = gate.path("staff");
    let out = gate.ok(&[
        "staff",
        "add",
        "--id",
        id,
        "--name",
        &format!("連携室 {id}"),
        "--role",
        role,
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(
        out.contains(&format!("staff member {id} registered ({role})")),
        "{out}"
    );
    StaffAccount {
        id: id.to_string(),
        cert: Terminal {
            name: id.to_string(),
            cert: PathBuf::from(printed(&out, "certificate:")),
            key: PathBuf::from(printed(&out, "private key:")),
        },
        p12: PathBuf::from(printed(&out, "PKCS#12:")),
        p12_password: printed(&out, "PKCS#12 password (shown once)"),
        otp: printed(&out, "one-time password (shown once"),
    }
}

/// A site with the console on its own port, open to `allow`.
fn site_with_office(emr: &SampleEmr, allow: &str) -> (Gate, u16) {
    office_on(Gate::init(emr.port), allow)
}

fn office_on(gate: Gate, allow: &str) -> (Gate, u16) {
    let office = free_port();
    let mut text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    text.push_str(&format!(
        "\n[office]\nlisten = \"127.0.0.1:{office}\"\nallow = [\"{allow}\"]\n"
    ));
    std::fs::write(&gate.config, text).expect("write gate.toml");
    let out = gate.cli(&["check-config"]);
    assert!(out.status.success(), "{}", common::show(&out));
    (gate, office)
}

fn wait_port(port: u16) {
    assert!(
        common::wait_for_tcp(port, Duration::from_secs(20)),
        "the console did not listen on {port}"
    );
}

/// Art 2, 6.2, 9.1–9.3, 11, 12.8 in a real browser, as a clerk works: staff certificate and
/// password (forced change), register a physician (form 3) and download the `.p12` once (a
/// second download refused), grant a consent with forms 5 and 6 and a link, the physician
/// views the patient through the gateway with that `.p12`, withdraw (form 7, confirmed), and
/// both the view and the refused attempt are in the patient's disclosure report (A4, CSV); a
/// clerk cannot open the staff page; a form without (or with a wrong) CSRF token is refused.
/// Every change is in the audit with the clerk's id, the forms and the site.
#[test]
fn art_2_9_12_8_liaison_office_console_in_a_real_browser() {
    require_tools();
    let emr = SampleEmr::start();
    let (mut gate, office) = site_with_office(&emr, "127.0.0.0/8");
    let clerk = staff_add(&gate, "clerk-1", "clerk");
    gate.start();
    wait_port(office);

    let work = tempfile::Builder::new()
        .prefix("seibo-office-")
        .tempdir()
        .expect("tempdir");
    // Kept after the test: the screenshots are for people to look at.
    let shots = tempfile::Builder::new()
        .prefix("seibo-office-shots-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let stdout_path = work.path().join("office.out");
    let stderr_path = work.path().join("office.err");
    let mut node = Command::new("node")
        .arg(repo().join("tests/browser/office.mjs"))
        .current_dir(repo().join("tests/browser"))
        .env("SEIBO_OFFICE_URL", format!("https://localhost:{office}"))
        .env("SEIBO_GATE_URL", format!("https://localhost:{}", gate.port))
        .env("SEIBO_CA", gate.ca())
        .env("SEIBO_STAFF_P12", &clerk.p12)
        .env("SEIBO_STAFF_P12_PASSWORD", &clerk.p12_password)
        .env("SEIBO_STAFF_ID", &clerk.id)
        .env("SEIBO_STAFF_OTP", &clerk.otp)
        .env("SEIBO_STAFF_NEW_PASSWORD", "Renkei-Shitsu-2026!")
        .env("SEIBO_TODAY", ymd(today_jst()))
        .env("SEIBO_WORK", work.path().join("browser"))
        .env("SEIBO_SHOTS", &shots)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run node (scripts/install-browser-tools installs it)");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = node.try_wait().expect("wait for node") {
            break Some(s);
        }
        if started.elapsed() > BROWSER_LIMIT {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &Path| {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(p) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };
    let stdout = read(&stdout_path);
    let stderr = read(&stderr_path);
    println!("{stdout}");
    println!("screenshots: {}", shots.display());
    let status = status.unwrap_or_else(|| {
        panic!(
            "the browser test did not finish within {BROWSER_LIMIT:?}:\n{stdout}\n{stderr}\n{}",
            gate.log()
        )
    });
    assert!(
        status.success(),
        "the browser test failed ({status}):\n{stdout}\n{stderr}\n{}",
        gate.log()
    );
    assert_eq!(
        stdout.lines().last(),
        Some("office: ok"),
        "{stdout}\n{stderr}"
    );
    for step in [
        "the console cookie is HttpOnly, Secure, SameSite=Strict",
        "the .p12 is downloaded",
        "a second download of the .p12 is refused (410)",
        "the relation picker offers exactly art 8.1's ten relations",
        "the physician views the consented patient's page (200)",
        "the withdrawal asks for confirmation first",
        "after the withdrawal the physician is refused (403)",
        "the disclosure report lists the view",
        "the disclosure report lists the refused attempt after the withdrawal",
        "the report prints to an A4 PDF",
        "the CSV download has both lines",
        "a clerk cannot open the staff page (403)",
        "a form with no CSRF token is refused (403)",
        "a form with a wrong CSRF token is refused (403)",
    ] {
        assert!(stdout.contains(step), "step {step:?} missing:\n{stdout}");
    }
    // Every screenshot printed is a PNG picture.
    let pictures: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("office: screenshot "))
        .collect();
    assert!(pictures.len() >= 18, "{pictures:?}");
    for p in &pictures {
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "{p}"
        );
    }

    // Every change was audited before it took effect, with the clerk, the forms and the site.
    let rows = gate.audit_rows();
    let by_clerk = |op: &str| -> Vec<&serde_json::Value> {
        rows.iter()
            .filter(|r| r["ingress"] == "admin" && r["path"] == op && r["staff"] == "clerk-1")
            .collect()
    };
    for op in [
        "physician-add",
        "terminal-register",
        "consent-grant",
        "consent-withdraw",
    ] {
        let found = by_clerk(op);
        assert!(
            found
                .iter()
                .any(|r| r["decision"] == "allow" && r["status"] == 200),
            "{op} by clerk-1 in {rows:#?}"
        );
        assert!(
            found.iter().all(|r| r["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("office:127.0.0.1:"))),
            "{found:?}"
        );
    }
    let grant = by_clerk("consent-grant")[0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for part in [
        "form 様式6-2026-118",
        "relative (spouse)",
        "received at test-site",
        "form 5 様式5-2026-118 explained by dr-office",
        "links nomura-clinic:N-778",
    ] {
        assert!(grant.contains(part), "{part:?} not in {grant:?}");
    }
    assert!(by_clerk("physician-add")[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("form 3 様式3-2026-041")));
    assert!(by_clerk("consent-withdraw")[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("form 7 様式7-2026-009") && r.contains("by patient")));
    // The physician's two requests are in the log as the report showed them.
    let views: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["ingress"] == "mtls" && r["patient"] == "P001" && r["physician"] == "dr-office"
        })
        .collect();
    assert!(views
        .iter()
        .any(|r| r["decision"] == "allow" && r["terminal"] == "office-pc"));
    assert!(views
        .iter()
        .any(|r| r["decision"] == "deny" && r["terminal"] == "office-pc"));
    // Opening the disclosure report is itself recorded.
    assert!(rows.iter().any(|r| r["path"] == "office-disclosure-report"
        && r["patient"] == "P001"
        && r["staff"] == "clerk-1"));
    drop(gate);
    drop(emr);
}

/// Cookie-jar curl against the console with a staff certificate.
fn office_curl(
    port: u16,
    gate: &Gate,
    t: &Terminal,
    path: &str,
    jar: &Path,
    extra: &[&str],
) -> CurlReply {
    let jar = jar.to_str().expect("utf-8");
    let mut args = vec!["-c", jar, "-b", jar];
    args.extend_from_slice(extra);
    curl(port, &gate.ca(), Some(t), path, &args)
}

fn csrf_of(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {body}"));
    let rest = &body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

/// Art 6.2, 12.4, 13.1 at the console, with curl: a physician's certificate never opens the
/// console and a staff certificate never the EMR; the console serves `/office/` only and the
/// physician listener never the console; a source outside `[office] allow` is closed at accept
/// (audited); a cross-site post, a post without or with a wrong CSRF token are refused
/// (audited); five wrong passwords lock a staff account as they lock a physician's; an admin
/// opens the staff page.
#[test]
fn art_6_2_13_1_console_refuses_wrong_certificates_sources_and_forms() {
    let emr = SampleEmr::start();
    // The console is open to 127.0.0.2 alone: curl from 127.0.0.1 is closed at accept.
    let (mut gate, office) = site_with_office(&emr, "127.0.0.2/32");
    let admin = staff_add(&gate, "admin-1", "admin");
    let locked = staff_add(&gate, "clerk-2", "clerk");
    gate.add_physician("dr-a");
    let physician = gate.add_terminal("dr-a", "dr-a-pc");
    gate.grant("P001", today_jst());
    gate.start();
    wait_port(office);
    let jar = gate.path("jar.txt");
    let from2 = ["--interface", "127.0.0.2"];

    // The allow-list, at accept, audited as a connection record of the console.
    let r = office_curl(office, &gate, &admin.cert, "/office/login", &jar, &[]);
    assert_eq!(r.status, None, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = gate.audit_dir().join("audit.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| {
            l.contains("\"kind\":\"connection\"")
                && l.contains("\"ingress\":\"office\"")
                && l.contains("source-not-allowed")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no office connection refusal in {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A physician's certificate never opens the console.
    let r = office_curl(office, &gate, &physician, "/office/", &jar, &from2);
    assert_eq!(r.status, Some(403), "{r:?}");
    assert!(
        r.body.contains("職員端末の証明書ではありません"),
        "{}",
        r.body
    );
    assert!(
        r.headers.contains("cache-control: no-store"),
        "{}",
        r.headers
    );
    // A staff certificate never opens the EMR.
    let r = curl(
        gate.port,
        &gate.ca(),
        Some(&admin.cert),
        "/patients/P001/basic",
        &[],
    );
    assert!(r.status == Some(403) || r.status == Some(401), "{r:?}");
    assert!(!r.body.contains("西予 花子"), "{}", r.body);
    // The console serves /office/ only; the physician listener never the console.
    let r = office_curl(
        office,
        &gate,
        &admin.cert,
        "/patients/P001/basic",
        &jar,
        &from2,
    );
    assert_eq!(r.status, Some(404), "{r:?}");
    let r = curl(gate.port, &gate.ca(), Some(&physician), "/office/", &[]);
    assert!(
        !r.body.contains("Liaison office sign-in") && !r.body.contains("/office/login"),
        "{r:?}"
    );
    assert!(r.status.is_some_and(|s| s >= 400), "{r:?}");

    // Sign in as the admin (one-time password, then the forced change).
    let r = office_curl(office, &gate, &admin.cert, "/office/login", &jar, &from2);
    assert_eq!(r.status, Some(200), "{r:?}");
    let login_csrf = csrf_of(&r.body);
    let id = format!("id={}", admin.id);
    let pw = format!("password={}", admin.otp);
    let csrf = format!("csrf={login_csrf}");
    let post = |path: &str, fields: &[&str], extra: &[&str]| {
        let mut args: Vec<&str> = from2.to_vec();
        args.extend_from_slice(extra);
        for f in fields {
            args.push("--data-urlencode");
            args.push(f);
        }
        office_curl(office, &gate, &admin.cert, path, &jar, &args)
    };
    let r = post("/office/login", &[&id, &pw, &csrf], &[]);
    assert_eq!(r.status, Some(303), "{r:?}");
    assert!(
        r.headers.contains("location: /office/password"),
        "{}",
        r.headers
    );
    assert!(
        r.headers.contains("set-cookie: __host-seibo_office=")
            && r.headers.contains("samesite=strict"),
        "{}",
        r.headers
    );
    let r = office_curl(office, &gate, &admin.cert, "/office/password", &jar, &from2);
    let session_csrf = csrf_of(&r.body);
    let csrf = format!("csrf={session_csrf}");
    let current = format!("current={}", admin.otp);
    let r = post(
        "/office/password",
        &[&current, "new=Kanri-Sha-2026!", &csrf],
        &[],
    );
    assert_eq!(r.status, Some(303), "{r:?}");
    let r = office_curl(office, &gate, &admin.cert, "/office/staff", &jar, &from2);
    assert_eq!(r.status, Some(200), "an admin opens the staff page: {r:?}");
    assert!(r.body.contains("clerk-2"), "{}", r.body);

    // Cross-site: a foreign Origin, then no and a wrong CSRF token with a valid session.
    let grant = [
        "patient=P002",
        "form6=x",
        "form5=y",
        "explained_by=dr-a",
        "by=patient",
    ];
    let mut with_csrf = grant.to_vec();
    with_csrf.push(&csrf);
    let r = post(
        "/office/consents/grant",
        &with_csrf,
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(r.status, Some(403), "{r:?}");
    assert!(r.body.contains("別のサイトからの送信"), "{}", r.body);
    let r = post(
        "/office/consents/grant",
        &with_csrf,
        &["-H", "Sec-Fetch-Site: cross-site"],
    );
    assert_eq!(r.status, Some(403), "{r:?}");
    let r = post("/office/consents/grant", &grant, &[]);
    assert_eq!(r.status, Some(403), "no token: {r:?}");
    let mut wrong = grant.to_vec();
    let bad = format!("csrf={}", "ab".repeat(32));
    wrong.push(&bad);
    let r = post("/office/consents/grant", &wrong, &[]);
    assert_eq!(r.status, Some(403), "wrong token: {r:?}");
    // The same form with the session's token goes through (and is validated: a date is
    // missing, so a clear 400 page, not a stack trace).
    let r = post("/office/consents/grant", &with_csrf, &[]);
    assert_eq!(r.status, Some(400), "{r:?}");
    assert!(
        r.body.contains("入力を確認してください") && r.body.contains("not a date"),
        "{}",
        r.body
    );
    // Art 8.3: a later "do not extend" request on an existing consent, from the console.
    gate.grant("P003", today_jst());
    let r = post(
        "/office/consents/no-extension",
        &["patient=P003", "form_ref=延長辞退-003", &csrf],
        &[],
    );
    assert_eq!(r.status, Some(200), "{r:?}");
    let shown = gate.ok(&["consent", "show", "--patient", "P003", "--json"]);
    assert!(
        shown.contains("\"no_extension\": true") || shown.contains("\"no_extension\":true"),
        "{shown}"
    );
    let rows = gate.audit_rows();
    assert!(
        rows.iter().any(|r| r["staff"] == "admin-1"
            && r["path"] == "consent-no-extension"
            && r["decision"] == "allow"),
        "do-not-extend audited with the staff member: {rows:#?}"
    );
    for reason in ["cross-site-post", "csrf-token-wrong"] {
        assert!(
            rows.iter().any(|r| r["staff"] == "admin-1"
                && r["reason"] == reason
                && r["decision"] == "deny"),
            "{reason} not audited: {rows:#?}"
        );
    }
    assert!(
        gate.cli(&["consent", "show", "--patient", "P002"])
            .status
            .code()
            == Some(1)
    );

    // Five wrong passwords lock a staff account; the right one is then refused too.
    let jar2 = gate.path("jar2.txt");
    let r = office_curl(office, &gate, &locked.cert, "/office/login", &jar2, &from2);
    let csrf2 = format!("csrf={}", csrf_of(&r.body));
    let try_pw = |pw: &str| {
        let mut args: Vec<&str> = from2.to_vec();
        let p = format!("password={pw}");
        for f in ["id=clerk-2", &p, &csrf2] {
            args.push("--data-urlencode");
            args.push(f);
        }
        office_curl(office, &gate, &locked.cert, "/office/login", &jar2, &args)
    };
    for i in 1..=5 {
        let r = try_pw("wrong-password-1");
        let want = if i < 5 { 401 } else { 403 };
        assert_eq!(r.status, Some(want), "try {i}: {r:?}");
    }
    let r = try_pw(&locked.otp);
    assert_eq!(r.status, Some(403), "locked: {r:?}");
    assert!(r.body.contains("ロックされています"), "{}", r.body);
    let list = gate.ok(&["staff", "list"]);
    assert!(
        list.contains("clerk-2") && list.contains("admin-1"),
        "{list}"
    );
    drop(gate);
    drop(emr);
}

/// Art 12.2, 6.2: with the WireGuard ingress enabled, the console issues a WireGuard terminal:
/// its `.conf` (private key, tunnel address, the gateway's key and endpoint) downloadable
/// once, the terminal registered and audited with the staff member.
#[test]
fn art_12_2_console_issues_a_wireguard_conf_downloadable_once() {
    let emr = SampleEmr::start();
    let udp = format!("127.0.0.1:{}", free_port());
    let (mut gate, office) = office_on(
        Gate::init_with("test-site", emr.port, &["--wireguard", &udp]),
        "127.0.0.0/8",
    );
    let admin = staff_add(&gate, "admin-1", "admin");
    gate.add_physician("dr-wg");
    gate.start();
    wait_port(office);
    let jar = gate.path("jar.txt");
    let r = office_curl(office, &gate, &admin.cert, "/office/login", &jar, &[]);
    let login = format!("csrf={}", csrf_of(&r.body));
    let post = |path: &str, fields: &[&str]| {
        let mut args: Vec<&str> = Vec::new();
        for f in fields {
            args.push("--data-urlencode");
            args.push(f);
        }
        office_curl(office, &gate, &admin.cert, path, &jar, &args)
    };
    let pw = format!("password={}", admin.otp);
    let r = post("/office/login", &["id=admin-1", &pw, &login]);
    assert_eq!(r.status, Some(303), "{r:?}");
    let r = office_curl(office, &gate, &admin.cert, "/office/password", &jar, &[]);
    let csrf = format!("csrf={}", csrf_of(&r.body));
    let current = format!("current={}", admin.otp);
    let r = post(
        "/office/password",
        &[&current, "new=Kanri-Sha-2026!", &csrf],
    );
    assert_eq!(r.status, Some(303), "{r:?}");
    let r = office_curl(office, &gate, &admin.cert, "/office/terminals", &jar, &[]);
    assert!(
        r.body.contains("WireGuard .conf"),
        "the kind picker offers WireGuard"
    );

    let r = post(
        "/office/terminals/issue",
        &["physician=dr-wg", "terminal=wg-1", "kind=wireguard", &csrf],
    );
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(r.body.contains("wg-1.conf"), "{}", r.body);
    let at = r.body.find("/office/download/").expect("download link");
    let link: String = r.body[at..].chars().take_while(|c| *c != '"').collect();
    let r = office_curl(office, &gate, &admin.cert, &link, &jar, &[]);
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(
        r.headers
            .contains("content-disposition: attachment; filename=\"wg-1.conf\""),
        "{}",
        r.headers
    );
    for part in [
        "[Interface]",
        "PrivateKey = ",
        "Address = 10.77.0.2",
        "[Peer]",
        &format!("Endpoint = {udp}"),
    ] {
        assert!(r.body.contains(part), "{part:?} not in {}", r.body);
    }
    let again = office_curl(office, &gate, &admin.cert, &link, &jar, &[]);
    assert_eq!(again.status, Some(410), "{again:?}");
    let list = gate.ok(&["terminal", "list"]);
    assert!(list.contains("wg-1") && list.contains("dr-wg"), "{list}");
    let rows = gate.audit_rows();
    assert!(rows.iter().any(|r| r["path"] == "terminal-register"
        && r["staff"] == "admin-1"
        && r["reason"]
            .as_str()
            .is_some_and(|x| x.contains("tunnel address 10.77.0.2"))));
    drop(gate);
    drop(emr);
}
