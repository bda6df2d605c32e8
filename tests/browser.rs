//! The physician's sign-in in a real headless browser (issue 4; rules art 6.3, 8, 13.1,
//! 13.2.5; issue 11 items 24-26: the start page, the print notice, "who am I"): the real gateway and the sample EMR on loopback, and `tests/browser/e2e.mjs`
//! driving Debian's chromium with playwright-core. Chromium's own TLS stack presents the very
//! `.p12` that `terminal add` wrote (imported into the browser's NSS database with pk12util,
//! auto-selected for the gateway's origin by the profile preference).
//!
//! The tools come from `scripts/install-browser-tools`; without them this test fails, it
//! never skips. Screenshots are kept in `tests/artifacts/browser/`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{today_jst, Gate, SampleEmr};

/// Longest run of the whole browser script (launch, nine pages, the idle wait).
const BROWSER_LIMIT: Duration = Duration::from_secs(180);
/// The session idle timeout set for this test, and how long the browser stays idle.
const IDLE_SECS: u64 = 3;
const IDLE_WAIT_MS: u64 = 5000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every tool the browser test needs, or a failure that says how to install them.
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

/// Art 6.3, 13.1, 13.2 and 8 in a real browser: sign-in page, the one-time password and its
/// forced change, which returns to the page first asked for (a consented patient's page);
/// printed, that page shows only the print notice (art 13.2); "who am I" in words; `/` leads
/// to the start page; the Japanese refusal of a patient without consent; and sign-out by the
/// idle timeout.
#[test]
fn art_6_3_13_1_signin_in_a_real_browser() {
    require_tools();
    let emr = SampleEmr::start();
    let mut gate = Gate::init(emr.port);
    let text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    assert!(text.contains("idle_timeout_secs = 900"), "{text}");
    let text = text.replace(
        "idle_timeout_secs = 900",
        &format!("idle_timeout_secs = {IDLE_SECS}"),
    );
    std::fs::write(&gate.config, text).expect("write gate.toml");
    gate.start();

    // The physician, with a one-time password the administrator chose.
    let id = "dr-browser";
    let initial = "Saijo-Spring-2026";
    gate.add_physician_with_password(id, "西予 太郎", initial);

    // The terminal: the .p12 and its password as `terminal add` printed them.
    let terms = gate.path("terms");
    let out = gate.ok(&[
        "terminal",
        "add",
        "--physician",
        id,
        "--name",
        "clinic-pc",
        "--out",
        terms.to_str().expect("utf-8"),
    ]);
    let p12 = PathBuf::from(printed(&out, "PKCS#12:"));
    let p12_password = printed(&out, "PKCS#12 password (shown once)");
    assert!(p12.exists(), "{out}");
    assert!(!p12_password.is_empty());

    gate.grant("P001", today_jst());

    let work = tempfile::Builder::new()
        .prefix("seibo-browser-")
        .tempdir()
        .expect("tempdir");
    let artifacts = repo().join("tests/artifacts/browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let stdout_path = work.path().join("e2e.out");
    let stderr_path = work.path().join("e2e.err");

    let mut node = Command::new("node")
        .arg(repo().join("tests/browser/e2e.mjs"))
        .current_dir(repo().join("tests/browser"))
        .env("SEIBO_URL", format!("https://localhost:{}", gate.port))
        .env("SEIBO_CA", gate.ca())
        .env("SEIBO_P12", &p12)
        .env("SEIBO_P12_PASSWORD", &p12_password)
        .env("SEIBO_ID", id)
        .env("SEIBO_PASSWORD", initial)
        .env("SEIBO_NEW_PASSWORD", "Kurumi-Tree-88!")
        .env("SEIBO_PATIENT_NAME", "西予 花子")
        .env("SEIBO_ALLOWED", "/patients/P001/basic")
        .env("SEIBO_REFUSED", "/patients/P002/basic")
        .env("SEIBO_HOME", "/.seibo/whoami")
        .env("SEIBO_IDLE_WAIT_MS", IDLE_WAIT_MS.to_string())
        .env("SEIBO_WORK", work.path().join("browser"))
        .env("SEIBO_ARTIFACTS", &artifacts)
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
    let status = status.unwrap_or_else(|| {
        panic!("the browser test did not finish within {BROWSER_LIMIT:?}:\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "the browser test failed ({status}):\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.lines().last(), Some("e2e: ok"), "{stdout}\n{stderr}");
    for step in [
        "lands on the sign-in page",
        "the one-time password leads to the password change",
        "the cookie is HttpOnly, Secure, SameSite=Strict",
        "EMR pages are refused until the password is changed",
        "is shown (200)",
        "the EMR was told the signed-in physician",
        "the EMR page carries the print guard",
        "the forced password change returns to the page first asked for",
        "printed, the EMR record is not rendered",
        "printed, the EMR page shows 印刷はできません",
        "printing to PDF gives a document",
        "the session end is Japan time with the minutes left",
        "the connection is named in words",
        "printed, the gateway page shows the notice",
        "opening / leads to the start page",
        "is refused (403)",
        "the refusal page says 閲覧できません",
        "after the idle timeout the physician is signed out",
    ] {
        assert!(stdout.contains(step), "step {step:?} missing:\n{stdout}");
    }

    // The screenshots are kept, and are PNG pictures.
    for name in [
        "signin.png",
        "print-emr.png",
        "print-whoami.png",
        "refused.png",
        "signed-out.png",
    ] {
        let p = artifacts.join(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "{} is not a screenshot",
            p.display()
        );
    }

    // What the gateway saw is what the browser did: every step is in the audit log.
    let rows = gate.audit_rows();
    let reasons: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["physician"] == id && r["ingress"] == "mtls")
        .map(|r| {
            (
                r["path"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let has = |path: &str, reason: &str| {
        reasons
            .iter()
            .any(|(p, r)| p.starts_with(path) && r == reason)
    };
    for (path, reason) in [
        ("/patients/P001/basic", "no-session"),
        ("/.seibo/login", "signin-page"),
        ("/.seibo/login", "login-ok"),
        ("/patients/P001/basic", "password-change-required"),
        ("/.seibo/password", "password-changed"),
        ("/patients/P001/basic", "allowed"),
        ("/", "start-page"),
        ("/.seibo/whoami", "whoami"),
        ("/patients/P002/basic", "no-consent"),
        ("/patients/P001/basic", "session-expired"),
    ] {
        assert!(has(path, reason), "{path} {reason} in {reasons:#?}");
    }
    // The browser presented the terminal's certificate: every row names that terminal.
    assert!(rows
        .iter()
        .filter(|r| r["physician"] == id && r["ingress"] == "mtls")
        .all(|r| r["terminal"] == "clinic-pc"));
    drop(gate);
    drop(emr);
}
