//! Operations (issue 5): the monitoring, service and firewall files checked with the real tools
//! from Debian's packages — `promtool` (prometheus), `systemd-analyze` (systemd), `nft`
//! (nftables). `scripts/install-test-tools` installs them; a missing tool FAILS its test, it
//! never skips it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use seibo_gate::ops::metrics::Metrics;
use seibo_gate::site::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's path; panics (fails the test) when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: run scripts/install-test-tools (the test needs the real tool)"
    );
}

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

fn write(path: &Path, contents: &str) {
    if let Err(e) = std::fs::write(path, contents) {
        panic!("{}: {e}", path.display());
    }
}

fn json(path: &Path) -> serde_json::Value {
    match serde_json::from_str(&read(path)) {
        Ok(v) => v,
        Err(e) => panic!("{}: not JSON: {e}", path.display()),
    }
}

const DASHBOARDS: [&str; 2] = ["dashboards/overview.json", "dashboards/compliance.json"];
const CONFIGS: [&str; 2] = ["config/seiyo-hospital.toml", "config/nomura-clinic.toml"];

// ---------------------------------------------------------------------------------------------
// Metrics: what the gateway exports.

/// Every metric family with one sample each (label families appear only once used), rendered
/// in the text exposition format exactly as `/metrics` serves it.
fn rendered_metrics() -> String {
    let m = match Metrics::new() {
        Ok(m) => m,
        Err(e) => panic!("metrics: {e}"),
    };
    m.requests
        .with_label_values(&["mtls", "allow", "allowed"])
        .inc();
    m.requests
        .with_label_values(&["mtls", "deny", "no-consent"])
        .inc();
    m.gateway_seconds
        .with_label_values(&["mtls"])
        .observe(0.002);
    m.upstream_seconds.observe(0.03);
    m.tls_handshakes
        .with_label_values(&["internet", "ok"])
        .inc();
    m.tls_handshakes
        .with_label_values(&["internet", "unknown-ca"])
        .inc();
    m.refused_connections
        .with_label_values(&["internet", "source-not-allowed"])
        .inc();
    m.connections.with_label_values(&["mtls"]).set(3);
    m.audit_records.inc();
    m.audit_failures.inc();
    m.audit_write_seconds.observe(0.0004);
    m.audit_chain_intact.set(1);
    m.audit_chain_records.set(10);
    m.audit_verifications.with_label_values(&["intact"]).inc();
    m.upstream_errors.with_label_values(&["connect"]).inc();
    m.consent_events.with_label_values(&["grant"]).inc();
    m.cert_expiry
        .with_label_values(&["internet"])
        .set(1_900_000_000);
    m.reloads.with_label_values(&["ok"]).inc();
    m.signins.with_label_values(&["failed"]).inc();
    m.lockouts.inc();
    m.sessions.set(2);
    m.observe_wireguard(
        &seibo_gate::ingress::wireguard::WgStats::default(),
        &seibo_gate::ingress::wireguard::WgStats {
            handshakes: 1,
            peers: 2,
            peers_up: 1,
            rx_bytes: 1000,
            tx_bytes: 2000,
            dropped_unknown_key: 1,
            ..Default::default()
        },
    );
    m.up.set(1);
    m.render()
}

/// The sample names in an exposition (histograms give `_bucket`, `_sum`, `_count`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Art 12.8: the exposition the gateway serves passes `promtool check metrics` (naming
/// conventions: units, `_total` counters, help texts), every name is prefixed `seibo_gate_`, and
/// no label could carry a physician or patient identifier.
#[test]
fn exported_metrics_pass_promtool_check_metrics() {
    let promtool = tool("promtool");
    let exposition = rendered_metrics();
    let mut child = match Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("promtool: {e}"),
    };
    {
        use std::io::Write;
        let Some(mut stdin) = child.stdin.take() else {
            panic!("promtool stdin")
        };
        if let Err(e) = stdin.write_all(exposition.as_bytes()) {
            panic!("promtool stdin: {e}");
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("promtool: {e}"),
    };
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems:\n{}\n--- exposition:\n{exposition}",
        text(&out)
    );
    let names = exported_names(&exposition);
    assert!(names.len() >= 15, "{names:?}");
    for n in &names {
        assert!(
            n.starts_with("seibo_gate_"),
            "{n} lacks the seibo_gate_ prefix"
        );
    }
    // Label names only: per-person usage belongs in the audit, not in labels.
    let allowed = [
        "ingress", "decision", "reason", "listener", "result", "cause", "kind", "version", "le",
    ];
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        for pair in labels.split("\",") {
            let name = pair
                .split('=')
                .next()
                .unwrap_or("")
                .trim_matches(['}', ' ', ',']);
            assert!(
                allowed.contains(&name),
                "label {name:?} in {line:?}: no physician, patient or terminal identifiers in labels"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PromQL in the dashboards and the alert rules.

/// Metric names referred to by a PromQL expression: identifiers that are not functions,
/// aggregations, keywords, label names (inside `{}` or `by (...)`), strings or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, stepping over strings.
    let skip_to = |mut i: usize, close: u8| -> usize {
        while i < b.len() && b[i] != close {
            if matches!(b[i], b'"' | b'\'' | b'`') {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_to(i + 1, c);
        } else if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c == b'#' {
            i = skip_to(i + 1, b'\n');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied();
            if LABEL_LISTS.contains(&word) {
                if next == Some(b'(') {
                    i = skip_to(j + 1, b')');
                }
            } else if next == Some(b'(') || KEYWORDS.contains(&word) {
                // A function call, an aggregation or a keyword.
            } else {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Grafana's variables replaced by values Prometheus accepts.
fn substitute_grafana_variables(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${instance}", ".*")
        .replace("$instance", ".*");
    assert!(!e.contains('$'), "unknown Grafana variable left in {e:?}");
    e
}

/// Every `expr` of the panels of a dashboard (template variable queries are not PromQL).
fn dashboard_exprs(path: &Path) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_string());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let d = json(path);
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// The `expr` values of a Prometheus rule file (inline, or a `|` / `>` block).
fn rule_file_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed
            .strip_prefix("- expr:")
            .or_else(|| trimmed.strip_prefix("expr:"))
        {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let ind = l.len() - l.trim_start().len();
                    if !l.trim().is_empty() && ind <= indent {
                        break;
                    }
                    block.push(l.trim());
                    i += 1;
                }
                out.push(block.join("\n").trim().to_string());
                continue;
            }
            out.push(rest.trim_matches(['"', '\'']).to_string());
        }
        i += 1;
    }
    out
}

/// A rule file with one recording rule per expression, for `promtool check rules`.
fn as_rule_file(exprs: &[String]) -> String {
    let mut y = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (n, e) in exprs.iter().enumerate() {
        y.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: |\n"
        ));
        for line in e.lines() {
            y.push_str(&format!("          {line}\n"));
        }
    }
    y
}

fn promtool_check_rules(promtool: &Path, file: &Path) {
    let out = run(Command::new(promtool).args(["check", "rules"]).arg(file));
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}",
        file.display(),
        text(&out)
    );
}

/// Art 12.8: the alert rules (gateway down, error ratio, refusal spike, repeated sign-in
/// failures, audit write failures, EMR unreachable, certificate expiring within 30 days) pass `promtool check rules`, and their
/// unit tests (`dashboards/alerts.test.yml`) pass `promtool test rules`.
#[test]
fn alert_rules_pass_promtool() {
    let promtool = tool("promtool");
    promtool_check_rules(&promtool, &root().join("dashboards/alerts.yml"));
    let yaml = read(&root().join("dashboards/alerts.yml"));
    for alert in [
        "SeiboGateDown",
        "SeiboGateHighErrorRatio",
        "SeiboGateRefusalSpike",
        "SeiboGateAuditWriteFailures",
        "SeiboGateUpstreamUnreachable",
        "SeiboGateCertificateExpiringSoon",
        "SeiboGateRepeatedSignInFailures",
    ] {
        assert!(
            yaml.contains(&format!("- alert: {alert}\n")),
            "{alert} missing"
        );
    }
    let out = run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(root().join("dashboards")));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

/// Art 12.8: every PromQL expression of both dashboards parses: each is wrapped (Grafana
/// variables substituted) into a recording rule and the file passes `promtool check rules`.
#[test]
fn dashboard_queries_parse_with_promtool() {
    let promtool = tool("promtool");
    let dir = tempdir();
    for d in DASHBOARDS {
        let exprs: Vec<String> = dashboard_exprs(&root().join(d))
            .iter()
            .map(|e| substitute_grafana_variables(e))
            .collect();
        assert!(exprs.len() >= 10, "{d}: only {} queries", exprs.len());
        let file = dir.path().join(format!(
            "{}.rules.yml",
            Path::new(d)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("dashboard")
        ));
        write(&file, &as_rule_file(&exprs));
        promtool_check_rules(&promtool, &file);
    }
    // The check is not vacuous: a broken query is refused.
    let bad = dir.path().join("bad.rules.yml");
    write(
        &bad,
        &as_rule_file(&["sum(rate(seibo_gate_requests_total[5m])".into()]),
    );
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(&bad));
    assert!(!out.status.success(), "{}", text(&out));
}

/// Art 12.8: the dashboards and the alert rules name only metrics the gateway exports (and
/// Prometheus's own `up`): no panel stays empty because of a misspelt or missing metric.
#[test]
fn dashboards_and_alerts_name_only_exported_metrics() {
    let mut exported = exported_names(&rendered_metrics());
    exported.insert("up".to_string());
    let mut sources: Vec<(String, Vec<String>)> = DASHBOARDS
        .iter()
        .map(|d| (d.to_string(), dashboard_exprs(&root().join(d))))
        .collect();
    let alerts = rule_file_exprs(&read(&root().join("dashboards/alerts.yml")));
    assert!(alerts.len() >= 6, "{alerts:?}");
    sources.push(("dashboards/alerts.yml".into(), alerts));
    let mut used = BTreeSet::new();
    for (file, exprs) in &sources {
        for e in exprs {
            let names = metric_names(e);
            assert!(!names.is_empty(), "{file}: no metric in {e:?}");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{file}: {n} is not exported by the gateway (in {e:?}); exported: {exported:?}"
                );
                used.insert(n);
            }
        }
    }
    // The dashboards cover every family the gateway exports.
    for family in [
        "seibo_gate_requests_total",
        "seibo_gate_gateway_duration_seconds_bucket",
        "seibo_gate_upstream_duration_seconds_bucket",
        "seibo_gate_tls_handshakes_total",
        "seibo_gate_refused_connections_total",
        "seibo_gate_connections",
        "seibo_gate_audit_records_total",
        "seibo_gate_audit_failures_total",
        "seibo_gate_audit_write_duration_seconds_bucket",
        "seibo_gate_audit_chain_intact",
        "seibo_gate_audit_chain_records",
        "seibo_gate_audit_verifications_total",
        "seibo_gate_upstream_errors_total",
        "seibo_gate_consent_events_total",
        "seibo_gate_certificate_expiry_timestamp_seconds",
        "seibo_gate_signin_attempts_total",
        "seibo_gate_signin_lockouts_total",
        "seibo_gate_sessions",
        "seibo_gate_wireguard_peers",
        "seibo_gate_wireguard_peers_up",
        "seibo_gate_wireguard_handshakes_total",
        "seibo_gate_wireguard_received_bytes_total",
        "seibo_gate_wireguard_sent_bytes_total",
        "seibo_gate_wireguard_dropped_packets_total",
        "seibo_gate_up",
    ] {
        assert!(
            used.contains(family),
            "{family} is on no dashboard or alert"
        );
    }
}

/// The PromQL name scanner itself.
#[test]
fn metric_name_scanner() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, ingress) (rate(a_bucket{x=~"b|c", y="}"}[5m] offset 1d))) / on(instance) group_left(version) build_info > 30 * 86400 or absent(up{job="j"}) unless count without (z) (c:d) and vector(0)"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "build_info", "up", "c:d"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
    let alerts = rule_file_exprs("      - alert: X\n        expr: |\n          a\n            or b\n        for: 1m\n      - alert: Y\n        expr: c > 0\n");
    assert_eq!(alerts, vec!["a\nor b".to_string(), "c > 0".to_string()]);
}

/// Art 12.8: both dashboards import as they are: JSON, schema version 39, a `datasource`
/// variable of type prometheus that every panel's queries use, unique panel ids.
#[test]
fn dashboards_are_importable() {
    for d in DASHBOARDS {
        let v = json(&root().join(d));
        assert_eq!(v["schemaVersion"], 39, "{d}");
        assert!(v["uid"]
            .as_str()
            .is_some_and(|u| u.starts_with("seibo-gate-")));
        assert!(v["id"].is_null(), "{d}: id must be null to import");
        let vars = v["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            vars.iter().any(|x| x["name"] == "datasource"
                && x["type"] == "datasource"
                && x["query"] == "prometheus"),
            "{d}: no datasource variable"
        );
        let mut ids = BTreeSet::new();
        for p in v["panels"].as_array().cloned().unwrap_or_default() {
            let id = p["id"].as_u64().unwrap_or(0);
            assert!(ids.insert(id), "{d}: panel id {id} twice");
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{d}: panel {id} has no gridPos"
            );
            if let Some(targets) = p["targets"].as_array() {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{d}: panel {id}");
                for t in targets {
                    assert_eq!(t["datasource"]["uid"], "${datasource}", "{d}: panel {id}");
                    assert_eq!(t["datasource"]["type"], "prometheus", "{d}: panel {id}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// The unit, with the binary paths pointing at the freshly built gateway.
fn unit_in_tempdir(dir: &Path) -> PathBuf {
    let unit = read(&root().join("systemd/seibo-gate.service")).replace(
        "/usr/local/bin/seibo-gate",
        env!("CARGO_BIN_EXE_seibo-gate"),
    );
    let path = dir.join("seibo-gate.service");
    write(&path, &unit);
    path
}

/// Art 12.5: the service unit passes `systemd-analyze verify` without a warning about it.
#[test]
fn systemd_unit_verifies() {
    let analyze = tool("systemd-analyze");
    let dir = tempdir();
    let unit = unit_in_tempdir(dir.path());
    let out = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stderr.contains("seibo-gate.service"),
        "systemd-analyze verify warns about the unit:\n{}",
        text(&out)
    );
    let text = read(&root().join("systemd/seibo-gate.service"));
    for line in [
        "Type=notify",
        "WatchdogSec=30",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=seibo-gate",
        "ExecStart=/usr/local/bin/seibo-gate serve --config /etc/seibo-gate/gate.toml",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
}

/// Art 12.5: `systemd-analyze security --offline=true` rates the unit's exposure at 1.5 or
/// lower (the score is printed).
#[test]
fn systemd_unit_exposure_is_at_most_1_5() {
    let analyze = tool("systemd-analyze");
    let dir = tempdir();
    let unit = unit_in_tempdir(dir.path());
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(score) = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for seibo-gate.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
    else {
        panic!("no exposure score in the output:\n{}", text(&out));
    };
    println!("systemd-analyze security --offline=true: exposure {score}");
    for l in stdout.lines().filter(|l| l.starts_with('✗')) {
        println!("  {l}");
    }
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{stdout}");
    // The tool's own threshold (an integer, tenths) agrees.
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=15", "--no-pager"])
        .arg(&unit));
    assert!(out.status.success(), "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// Firewall and configs.

fn load(rel: &str) -> Config {
    match Config::load(&root().join(rel)) {
        Ok(c) => c,
        Err(e) => panic!("{rel}: {e}"),
    }
}

fn nft_check(nft: &Path, file: &Path) -> Output {
    run(Command::new(nft).arg("-c").arg("-f").arg(file))
}

/// Art 12.4, 12.5: the ruleset derived from each example config passes `nft -c -f`; it opens
/// each listener to its allow-list only, the metrics port to its scrape network only, and egress
/// to the EMR's private segment only (DNS only for a named EMR).
#[test]
fn firewall_rulesets_pass_nft_check() {
    let nft = tool("nft");
    let dir = tempdir();
    let mut rulesets = Vec::new();
    for rel in CONFIGS {
        let cfg = load(rel);
        let rules = match seibo_gate::site::firewall::ruleset(&cfg) {
            Ok(r) => r,
            Err(e) => panic!("{rel}: {e}"),
        };
        let file = dir.path().join(format!("{}.nft", cfg.site.id));
        write(&file, &rules);
        let out = nft_check(&nft, &file);
        assert!(
            out.status.success(),
            "nft -c -f on the ruleset of {rel}:\n{}\n--- ruleset:\n{rules}",
            text(&out)
        );
        rulesets.push(rules);
    }
    let (hospital, clinic) = (&rulesets[0], &rulesets[1]);
    assert!(hospital.contains("ip saddr @listener0_v4 tcp dport 443 accept"));
    assert!(hospital.contains("ip6 saddr @listener0_v6 tcp dport 443 accept"));
    assert!(hospital.contains("ip daddr 10.10.0.2 ip saddr @listener1_v4 tcp dport 8443 accept"));
    assert!(hospital.contains("ip daddr 10.30.0.2 ip saddr 10.30.0.0/24 tcp dport 9464 accept"));
    assert!(hospital.contains("ip daddr @upstream_v4 tcp dport 8080 accept"));
    assert!(!hospital.contains("dport 53"));
    assert!(clinic.contains("meta nfproto ipv4 tcp dport 443 accept"));
    assert!(clinic.contains("meta nfproto ipv6 tcp dport 443 accept"));
    assert!(
        !clinic.contains("dport 9464"),
        "loopback metrics stay closed"
    );
    assert!(clinic.contains("ip daddr @upstream_v4 tcp dport 8000 accept"));
    // Issue 14: each site's peer API open to the other site's gateway only, and egress to the
    // other site's peer API only (audit query --network).
    assert!(hospital.contains("ip saddr @listener2_v4 tcp dport 8843 accept"));
    assert!(hospital.contains("ip daddr 198.51.100.20 tcp dport 8843 accept"));
    assert!(clinic.contains("ip saddr @listener1_v4 tcp dport 8843 accept"));
    assert!(clinic.contains("ip daddr 203.0.113.10 tcp dport 8843 accept"));
    assert!(
        !hospital.contains("ip daddr 203.0.113.10 tcp dport 8843"),
        "not to itself"
    );
    assert!(
        clinic.contains("udp dport 53 accept"),
        "named EMR needs DNS"
    );

    // The check is not vacuous: nft refuses a broken ruleset.
    let bad = dir.path().join("bad.nft");
    write(
        &bad,
        &rulesets[0].replace("tcp dport 443 accept", "tcp dport 443 acept"),
    );
    assert!(!nft_check(&nft, &bad).status.success());
}

/// Art 12.4–12.6: both example configs pass `seibo-gate check-config` (`--no-files`: the
/// certificates and keys they name are another machine's).
#[test]
fn example_configs_pass_check_config() {
    for rel in CONFIGS {
        let out = run(Command::new(env!("CARGO_BIN_EXE_seibo-gate"))
            .args(["check-config", "--no-files", "--config"])
            .arg(root().join(rel)));
        assert!(out.status.success(), "{rel}:\n{}", text(&out));
    }
}

/// No private key is committed: `certs/` ignores key material, and no tracked file of the
/// repository's ops directories holds a PEM private key.
#[test]
fn no_private_key_in_the_repository() {
    let ignore = read(&root().join("certs/.gitignore"));
    for pattern in ["*.key", "*.p12"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            "{pattern} not ignored"
        );
    }
    for dir in ["certs", "config", "dashboards", "systemd", "scripts"] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            panic!("{dir}/ missing")
        };
        for e in entries.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path()) {
                assert!(
                    !s.contains("PRIVATE KEY-----"),
                    "{} holds a private key",
                    e.path().display()
                );
            }
        }
    }
}
