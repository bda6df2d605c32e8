//! Where a new admin stumbles (issue 11 items 18, 20, 21, 23), tried through the real binary as
//! an admin would: a site whose keys the service user cannot read, dates that cannot be meant,
//! exit statuses and help, and a test suite that skips nothing.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run seibo-gate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The uid of `nobody` in /etc/passwd (the user the service runs as in these tests).
fn nobody_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("user nobody in /etc/passwd");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().expect("uid"), f[3].parse().expect("gid"))
}

/// The name of the group with `gid` in /etc/group.
fn group_name(gid: u32) -> String {
    let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == gid.to_string())
        .map(|f| f[0].to_string())
        .expect("nobody's group in /etc/group")
}

/// The README's "Let the service read its files" shell block (deployment step 4), as written.
fn readme_permission_steps() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let step = readme
        .find("**Let the service read its files**")
        .expect("README: deployment step 'Let the service read its files'");
    let rest = &readme[step..];
    let start = rest.find("```sh\n").expect("a sh block in that step") + "```sh\n".len();
    let end = rest[start..].find("```").expect("end of the sh block") + start;
    rest[start..end].to_string()
}

/// Art 12.1, 12.2 (issue 11 item 18): a WireGuard site as `init` writes it leaves
/// `tls/server.key`, `tls/tunnel.key` and `wireguard/gateway.key` root-only; `check-config --as`
/// the service user fails naming each with its fix (exit 78). After the README's deployment
/// step, run exactly as written (site directory and group substituted), it passes, and the
/// gateway then starts as that user with no warning in its log.
#[test]
fn art_12_2_check_config_as_service_user_names_root_only_keys_until_the_readme_steps() {
    let (uid, gid) = nobody_ids();
    let group = group_name(gid);
    let tmp = tempfile::Builder::new()
        .prefix("seibo-gate-cli-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let etc = tmp.path().join("etc/seibo-gate");
    let port = free_port();
    let wg_port = free_port();
    let metrics = free_port();
    let out = Command::new(BIN)
        .arg("init")
        .arg("--dir")
        .arg(&etc)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "http://127.0.0.1:9"])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .args(["--wireguard", &format!("127.0.0.1:{wg_port}")])
        .output()
        .expect("init");
    assert!(out.status.success(), "init: {}", show(&out));
    // `[state] dir = "/var/lib/seibo-gate"` as the README says; systemd's StateDirectory=
    // creates it for the service user (mode 0700) before the unit starts.
    let state = tmp.path().join("var/lib/seibo-gate");
    std::fs::create_dir_all(&state).expect("state dir");
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).expect("chown state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = etc.join("gate.toml");
    let text = std::fs::read_to_string(&config).expect("gate.toml");
    assert!(text.contains("dir = \"state\""), "{text}");
    std::fs::write(
        &config,
        text.replacen(
            "dir = \"state\"",
            &format!("dir = {:?}", state.display().to_string()),
            1,
        ),
    )
    .expect("write gate.toml");

    // As written by init: root-only keys, and the config itself is root:root 0640.
    let refused = run(&["check-config", "--as", "nobody"], &config);
    assert_eq!(refused.status.code(), Some(78), "{}", show(&refused));
    let err = stderr(&refused);
    for (key, file) in [
        ("the config file", "gate.toml"),
        ("listener[0].key", "tls/server.key"),
        ("wireguard.key", "tls/tunnel.key"),
        ("wireguard.private_key", "wireguard/gateway.key"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{key} {}", etc.join(file).display())))
            .unwrap_or_else(|| panic!("{file} ({key}) not named: {err}"));
        assert!(
            line.contains("not readable by nobody") && line.contains("fix: chgrp"),
            "{line}"
        );
    }
    assert!(
        !err.contains("terminal-ca.key"),
        "the CA key is not the service's to read: {err}"
    );
    // The same check as the user itself (what the unit's ExecStartPre does) fails the same way.
    let as_nobody = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ])
        .arg(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(as_nobody.status.code(), Some(78), "{}", show(&as_nobody));

    // The README's step, exactly as written, for this site and this user's group.
    let script = readme_permission_steps()
        .replace("/etc/seibo-gate", &etc.display().to_string())
        .replace("chgrp seibo-gate", &format!("chgrp {group}"))
        .replace("seibo-gate check-config", &format!("{BIN} check-config"))
        .replace("--as seibo-gate", "--as nobody");
    let fixed = Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(
        fixed.status.success(),
        "README step failed:\n{script}\n{}",
        show(&fixed)
    );
    assert!(
        String::from_utf8_lossy(&fixed.stdout).contains(": ok"),
        "{}",
        show(&fixed)
    );
    assert!(
        fixed.stderr.is_empty(),
        "warnings after the README step: {}",
        show(&fixed)
    );
    let ca_key = std::fs::metadata(etc.join("ca/terminal-ca.key")).expect("ca key");
    assert_eq!(
        ca_key.permissions().mode() & 0o777,
        0o600,
        "CA key stays root-only"
    );

    // The gateway now starts as that user, and says nothing worse than INFO.
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ])
        .arg(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("SEIBO_GATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("serve as nobody");
    let start = Instant::now();
    let up = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "serve as nobody exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if wait_for_tcp(port, Duration::from_millis(200)) {
            break true;
        }
        if start.elapsed() > START_LIMIT {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log_path)
        .expect("log")
        .read_to_string(&mut text)
        .expect("read log");
    assert!(up, "serve as nobody did not come up: {text}");
    assert!(text.contains("INFO"), "no log at all? {text}");
    for bad in ["WARN", "ERROR"] {
        assert!(!text.contains(bad), "{bad} in the start log: {text}");
    }
}

/// Art 8.3 (issue 11 item 20): a publication date beyond `[admin] future_grace_days` (3 by
/// default) is refused (exit 64, saying why and how) and registers nothing; `--allow-future`
/// accepts it; a date within the grace is accepted; the grace is configurable.
#[test]
fn art_8_3_future_publication_date_refused_unless_allow_future() {
    let g = Gate::init(free_port());
    let today = today_jst();
    let grant = |patient: &str, published: time::Date, extra: &[&str]| {
        let date = ymd(published);
        let mut args = vec![
            "consent",
            "grant",
            "--patient",
            patient,
            "--by",
            "patient",
            "--published",
            &date,
            "--form-ref",
            "F6-1",
        ];
        args.extend_from_slice(extra);
        g.cli(&args)
    };
    let typo = grant("P001", today + time::Duration::days(365 * 4), &[]);
    assert_eq!(typo.status.code(), Some(64), "{}", show(&typo));
    let err = stderr(&typo);
    assert!(
        err.contains("--published") && err.contains("--allow-future"),
        "{err}"
    );
    let shown = g.cli(&["consent", "show", "--patient", "P001", "--json"]);
    assert!(
        !shown.status.success() || !String::from_utf8_lossy(&shown.stdout).contains("published"),
        "a refused grant registered a consent: {}",
        show(&shown)
    );

    let allowed = grant(
        "P001",
        today + time::Duration::days(365 * 4),
        &["--allow-future"],
    );
    assert!(allowed.status.success(), "{}", show(&allowed));
    let near = grant("P002", today + time::Duration::days(3), &[]);
    assert!(near.status.success(), "within the grace: {}", show(&near));

    let text = std::fs::read_to_string(&g.config).expect("gate.toml");
    std::fs::write(
        &g.config,
        format!("{text}\n[admin]\nfuture_grace_days = 0\n"),
    )
    .expect("write");
    let tomorrow = grant("P003", today + time::Duration::days(1), &[]);
    assert_eq!(tomorrow.status.code(), Some(64), "{}", show(&tomorrow));
    let today_ok = grant("P003", today, &[]);
    assert!(today_ok.status.success(), "{}", show(&today_ok));
}

/// Art 12.8 (issue 11 item 20): `audit query` with `--since` not before `--until`, or a
/// `--since` in the future, is refused (exit 64) instead of answering "no records" with exit 0.
#[test]
fn art_12_8_reversed_empty_or_future_audit_range_is_refused() {
    let g = Gate::init(free_port());
    g.grant("P001", today_jst());
    let today = ymd(today_jst());
    let tomorrow = ymd(today_jst() + time::Duration::days(1));
    let next_year = ymd(today_jst() + time::Duration::days(365));
    let q = |since: &str, until: &str| {
        g.cli(&[
            "audit", "query", "--json", "--since", since, "--until", until,
        ])
    };
    let ok = q(&today, &tomorrow);
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("consent"),
        "today's grant is in today's range: {}",
        show(&ok)
    );
    for (since, until, says) in [
        (&tomorrow, &today, "not before --until"),
        (&today, &today, "not before --until"),
        (
            &next_year,
            &ymd(today_jst() + time::Duration::days(366)),
            "in the future",
        ),
    ] {
        let out = q(since, until);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{since}..{until}: {}",
            show(&out)
        );
        assert!(
            stderr(&out).contains(says),
            "{since}..{until}: {}",
            show(&out)
        );
        assert!(out.stdout.is_empty(), "{}", show(&out));
    }
}

/// Issue 11 item 21: one exit-status scheme (sysexits). `--help` lists it; every usage error,
/// clap's included, is 64 (not clap's 2); a config error 78; a refused request 1.
#[test]
fn exit_statuses_follow_sysexits_and_help_lists_them() {
    let help = Command::new(BIN).arg("--help").output().expect("help");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for line in ["64  usage", "78  config", "1  refused", "74  I/O"] {
        assert!(text.contains(line), "--help lacks {line:?}: {text}");
    }
    let g = Gate::init(free_port());
    for args in [
        vec![
            "physician",
            "suspend",
            "--id",
            "dr-x",
            "--reason",
            "holiday",
        ],
        vec!["physician", "list", "--no-such-option"],
        vec!["physician"],
        vec![
            "consent",
            "grant",
            "--patient",
            "P1",
            "--by",
            "cousin",
            "--published",
            "2026-01-01",
            "--form-ref",
            "F",
        ],
        vec![
            "consent",
            "grant",
            "--patient",
            "P1",
            "--by",
            "patient",
            "--published",
            "2026-02-30",
            "--form-ref",
            "F",
        ],
        vec!["audit", "query", "--since", "yesterday"],
    ] {
        let out = g.cli(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", show(&out));
        assert!(!out.stderr.is_empty(), "{args:?}: says nothing");
    }
    let no_command = Command::new(BIN).output().expect("bare");
    assert_eq!(no_command.status.code(), Some(64), "{}", show(&no_command));

    let refused = g.cli(&["physician", "resume", "--id", "dr-nobody"]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));

    std::fs::write(&g.config, "[site]\nid = \"x\"\n").expect("write");
    let bad = g.cli(&["physician", "list"]);
    assert_eq!(bad.status.code(), Some(78), "{}", show(&bad));
}

/// Issue 11 item 21: an admin command that finds no config says how to name one (the option,
/// the environment variable, the default, and `init`), exit 78.
#[test]
fn admin_command_without_a_config_says_how_to_name_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing: PathBuf = tmp.path().join("gate.toml");
    for how in ["option", "env"] {
        let mut c = Command::new(BIN);
        c.args(["physician", "list"])
            .env_remove("SEIBO_GATE_CONFIG");
        if how == "option" {
            c.arg("--config").arg(&missing);
        } else {
            c.env("SEIBO_GATE_CONFIG", &missing);
        }
        let out = c.output().expect("run");
        assert_eq!(out.status.code(), Some(78), "{how}: {}", show(&out));
        let err = stderr(&out);
        for needed in [
            missing.display().to_string().as_str(),
            "--config PATH",
            "SEIBO_GATE_CONFIG",
            "/etc/seibo-gate/gate.toml",
            "seibo-gate init",
        ] {
            assert!(
                err.contains(needed),
                "{how}: {needed:?} missing from: {err}"
            );
        }
    }
}

/// Issue 11 item 23: the suite says nothing is skipped, so no test carries the ignore attribute
/// (measurements are benchmarks in `benches/`, which `cargo test --all-targets` runs once).
#[test]
fn no_test_is_ignored() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let attr = ["#[", "ignore"].concat();
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = ["src", "tests", "benches", "fuzz"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut files = 0;
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() && !path.ends_with("target") {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).expect("read");
                if text.contains(&attr) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 20, "walked only {files} files");
    assert!(found.is_empty(), "ignored tests in {found:?}");
}
