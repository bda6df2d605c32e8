//! The README's first command: `seibo-gate demo` sets a site up on loopback and prints curl
//! lines; each does what the printed comment says (art 1: the physician's view through the
//! gateway, and what is refused).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_seibo-gate");

/// Runs one printed command line with `sh -c`; curl's status code, or "000" without a response.
fn status_of(line: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{line} -s -o /dev/null -w '%{{http_code}}' --max-time 10"
        ))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Art 1, 8, 12.1: the demo's allowed view, its refusals, and its audit commands work as printed.
#[test]
fn art_1_demo_prints_working_commands() {
    assert!(
        Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "curl must be installed"
    );
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let done = l.starts_with("Press Ctrl-C");
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with("Press Ctrl-C")),
        "demo did not come up: {lines:#?}"
    );
    // The command printed after each numbered comment.
    let after = |marker: &str| -> String {
        let i = lines
            .iter()
            .position(|l| l.starts_with(marker))
            .unwrap_or_else(|| panic!("{marker} missing: {lines:#?}"));
        lines[i + 1].clone()
    };
    assert_eq!(
        status_of(&after("# 0.")),
        "303",
        "sign-in redirects on success"
    );
    assert_eq!(status_of(&after("# 1.")), "200", "allowed view");
    assert_eq!(status_of(&after("# 2.")), "403", "no consent");
    assert_eq!(status_of(&after("# 3.")), "404", "unmapped page");
    assert_eq!(
        status_of(&after("# 4.")),
        "000",
        "no client certificate: no response"
    );
    let verify = Command::new("sh")
        .arg("-c")
        .arg(
            &lines[lines
                .iter()
                .position(|l| l.starts_with("# 5."))
                .expect("# 5")
                + 2],
        )
        .output()
        .expect("audit verify");
    assert!(verify.status.success(), "{verify:?}");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("audit log intact"));
    let withdraw = Command::new("sh")
        .arg("-c")
        .arg(after("# 6."))
        .output()
        .expect("consent withdraw");
    assert!(withdraw.status.success(), "{withdraw:?}");
    assert_eq!(
        status_of(&after("# 1.")),
        "403",
        "withdrawn: refused at the next request"
    );

    // Ctrl-C stops it cleanly.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let stop = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "demo exit: {status}");
            break;
        }
        if Instant::now() > stop {
            let _ = child.kill();
            panic!("demo did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
