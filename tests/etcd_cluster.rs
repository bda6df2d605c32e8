//! Proof of the regional registry's test harness (issue 13): a real three-member etcd cluster
//! with TLS everywhere and client-certificate authentication (`tests/common/etcd.rs`), and
//! HAProxy in TCP mode in front of several backends (`tests/common/haproxy.rs`). Real
//! processes on loopback, nothing mocked; every wait is bounded in time.
//!
//! The timings these tests print (`--nocapture`) are the harness's figures on this machine:
//! cluster start, a write's failure after the quorum is lost, recovery after restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::haproxy::{Haproxy, HaproxyOptions};
use common::show;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `etcdctl` with the cluster's CA but the given client certificate (or none).
fn etcdctl_as(cluster: &EtcdCluster, cert: Option<(&Path, &Path)>, args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints().join(",")))
        .arg(format!("--cacert={}", cluster.ca().display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s"]);
    if let Some((c, k)) = cert {
        cmd.arg(format!("--cert={}", c.display()))
            .arg(format!("--key={}", k.display()));
    }
    cmd.args(args).output().expect("run etcdctl")
}

/// A client certificate and key from a CA that the cluster does not trust.
fn foreign_client(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("test setup");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("test setup");
    p.distinguished_name.push(DnType::CommonName, "Foreign CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = p.self_signed(&ca_key).expect("test setup");
    let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).expect("test setup");
    let key = KeyPair::generate().expect("test setup");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("test setup");
    p.distinguished_name
        .push(DnType::CommonName, "foreign gateway");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).expect("test setup");
    let (c, k) = (dir.join("foreign.crt"), dir.join("foreign.key"));
    std::fs::write(&c, cert.pem()).expect("test setup");
    std::fs::write(&k, key.serialize_pem()).expect("test setup");
    (c, k)
}

/// Issue 13 (art 6.2, 9.4: one registry for the network): three members with TLS start and
/// serve `etcdctl put`/`get` with the client certificate; a client without a certificate, or
/// with one from a foreign CA, is refused; the `[registry]` section and the credentials the
/// gateways will use are written in issue 13's keys.
#[test]
fn three_member_tls_cluster_serves_certified_clients_and_refuses_others() {
    let cluster = EtcdCluster::start(3);
    eprintln!(
        "timing: 3-member TLS cluster healthy {:?} after start",
        cluster.started_in
    );
    assert_eq!(cluster.len(), 3);
    for e in cluster.endpoints() {
        assert!(e.starts_with("https://127.0.0.1:"), "endpoint {e}");
    }

    let members = cluster.etcdctl(&["member", "list", "-w", "simple"]);
    assert!(members.status.success(), "{}", show(&members));
    let list = stdout(&members);
    assert_eq!(list.lines().count(), 3, "member list: {list}");
    for i in 0..3 {
        assert!(
            list.contains(&format!("m{i}, https://127.0.0.1:")),
            "m{i} missing: {list}"
        );
        assert!(list.contains(&cluster.endpoint(i)), "{list}");
    }

    let put = cluster.etcdctl(&["put", "/seibo-test/physician/D001", "Dr Seiyo"]);
    assert!(put.status.success(), "{}", show(&put));
    // Each member answers the read on its own (a linearizable read through each).
    for i in 0..3 {
        let get = cluster.etcdctl_at(
            &[cluster.endpoint(i)],
            &["get", "--print-value-only", "/seibo-test/physician/D001"],
        );
        assert!(get.status.success(), "m{i}: {}", show(&get));
        assert_eq!(stdout(&get).trim(), "Dr Seiyo", "m{i}");
    }

    // The gateway's own certificate is a valid client too.
    let gw = etcdctl_as(
        &cluster,
        Some((&cluster.client_cert(), &cluster.client_key())),
        &["get", "--print-value-only", "/seibo-test/physician/D001"],
    );
    assert!(gw.status.success(), "{}", show(&gw));
    assert_eq!(stdout(&gw).trim(), "Dr Seiyo");

    // No client certificate: the handshake is refused, nothing is read or written.
    let t = Instant::now();
    let anon = etcdctl_as(&cluster, None, &["put", "/seibo-test/anon", "x"]);
    assert!(
        !anon.status.success(),
        "a client without a certificate wrote: {}",
        show(&anon)
    );
    eprintln!(
        "timing: client without certificate refused after {:?}",
        t.elapsed()
    );
    let (fc, fk) = foreign_client(cluster.dir());
    let foreign = etcdctl_as(
        &cluster,
        Some((&fc, &fk)),
        &["put", "/seibo-test/foreign", "x"],
    );
    assert!(
        !foreign.status.success(),
        "a client with a foreign CA's certificate wrote: {}",
        show(&foreign)
    );
    let none = cluster.etcdctl(&["get", "--prefix", "--keys-only", "/seibo-test/"]);
    assert!(none.status.success(), "{}", show(&none));
    let keys = stdout(&none);
    assert_eq!(keys.trim(), "/seibo-test/physician/D001", "keys: {keys}");

    // The gateway's files and [registry] section.
    let site = tempfile::tempdir().unwrap();
    cluster.write_credentials(site.path());
    for f in ["etcd-ca.crt", "gateway.crt", "gateway.key"] {
        assert!(site.path().join("registry").join(f).is_file(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(site.path().join("registry/gateway.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "gateway.key mode {mode:o}");
    let toml_text = cluster.registry_toml("/seibo-net/", 15);
    let v: toml::Table = toml::from_str(&toml_text).unwrap();
    let r = v["registry"].as_table().unwrap();
    assert_eq!(r["backend"].as_str(), Some("etcd"));
    assert_eq!(r["prefix"].as_str(), Some("/seibo-net/"));
    assert_eq!(r["ca"].as_str(), Some("registry/etcd-ca.crt"));
    assert_eq!(r["cert"].as_str(), Some("registry/gateway.crt"));
    assert_eq!(r["key"].as_str(), Some("registry/gateway.key"));
    assert_eq!(r["max_stale_secs"].as_integer(), Some(15));
    let eps: Vec<&str> = r["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(eps, cluster.endpoints());
    // The written credentials work from the site directory, as the gateway will use them.
    let reg = site.path().join("registry");
    let mut cmd = Command::new("etcdctl");
    let from_site = cmd
        .env("ETCDCTL_API", "3")
        .current_dir(site.path())
        .arg(format!("--endpoints={}", eps.join(",")))
        .arg(format!("--cacert={}", reg.join("etcd-ca.crt").display()))
        .arg(format!("--cert={}", reg.join("gateway.crt").display()))
        .arg(format!("--key={}", reg.join("gateway.key").display()))
        .args(["--command-timeout=3s", "endpoint", "health"])
        .output()
        .unwrap();
    assert!(from_site.status.success(), "{}", show(&from_site));
}

/// Issue 13 (`check-config` validates `[registry]` and says when etcd cannot be reached): a
/// site from `seibo-gate init` pointed at the cluster by the harness passes `check-config`,
/// which reaches the registry; with every member stopped it fails, naming the endpoints.
#[test]
fn a_site_configured_by_the_harness_passes_check_config_and_fails_it_without_etcd() {
    let mut cluster = EtcdCluster::start(3);
    let gate = common::Gate::init(common::free_port());
    cluster.configure_gateway(&gate.config, "/seibo-net/", 15);
    let ok = gate.cli(&["check-config"]);
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(
        stdout(&ok).contains(&format!(
            "regional registry: reached {}",
            cluster.endpoint(0)
        )),
        "{}",
        show(&ok)
    );
    for i in 0..3 {
        cluster.stop_member(i);
    }
    let t = Instant::now();
    let down = gate.cli(&["check-config"]);
    assert!(!down.status.success(), "{}", show(&down));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(
        err.contains("regional registry: cannot be reached at"),
        "{}",
        show(&down)
    );
    eprintln!(
        "timing: check-config with etcd down answered after {:?}",
        t.elapsed()
    );
}

/// Issue 13: the `etcd-client` crate (rustls + ring, no process-level crypto provider
/// installed) talks to the cluster with TLS and the gateway's client certificate: put, get, a
/// compare-and-set transaction, and a prefix watch that sees a put made through `etcdctl`.
/// Without a client certificate the crate's requests are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_with_tls_and_client_certificate_puts_and_watches_a_prefix() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "this test proves the crate works without a process-level default provider"
    );
    let cluster = EtcdCluster::start(3);
    let mut client = cluster.client().await;

    let put = client
        .put("/seibo-watch/terminal/T1", "active", None)
        .await
        .unwrap();
    let rev = put.header().unwrap().revision();
    let got = client
        .get("/seibo-watch/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    assert_eq!(got.kvs()[0].value_str().unwrap(), "active");
    assert_eq!(got.header().unwrap().revision(), rev);

    // Compare-and-set on the revision read: the first wins, the stale one loses.
    let key = "/seibo-watch/terminal/T1";
    let mod_rev = got.kvs()[0].mod_revision();
    let cas = |v: &'static str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_rev)])
            .and_then([TxnOp::put(key, v, None)])
    };
    assert!(client.txn(cas("suspended")).await.unwrap().succeeded());
    assert!(!client.txn(cas("revoked")).await.unwrap().succeeded());

    // A prefix watch from the next revision; its first message confirms it, without events.
    let mut watch = client
        .watch(
            "/seibo-watch/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("watch confirmation within 10 s")
        .unwrap()
        .expect("watch stream open");
    assert!(first.created(), "first watch message confirms the watch");
    assert!(first.events().is_empty());

    let t = Instant::now();
    let out = cluster.etcdctl(&["put", "/seibo-watch/consent/P001", "withdrawn"]);
    assert!(out.status.success(), "{}", show(&out));
    // Events arrive in revision order: the transaction's put first, then etcdctl's.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let msg = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("watch events within 10 s")
            .unwrap()
            .expect("watch stream open");
        for ev in msg.events() {
            let kv = ev.kv().unwrap();
            assert_eq!(ev.event_type(), EventType::Put);
            seen.push((
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    eprintln!(
        "timing: etcdctl put seen by the prefix watch {:?} after the command started",
        t.elapsed()
    );
    assert_eq!(seen.len(), 2, "events: {seen:?}");
    assert_eq!(
        (seen[0].0.as_str(), seen[0].1.as_str()),
        ("/seibo-watch/terminal/T1", "suspended")
    );
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_str()),
        ("/seibo-watch/consent/P001", "withdrawn")
    );
    assert!(seen[0].2 < seen[1].2);

    // The crate without a client certificate: refused.
    let ca = std::fs::read(cluster.ca()).unwrap();
    let anon_opts = ConnectOptions::new()
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(ca)))
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let t = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        let mut anon = Client::connect(cluster.endpoints(), Some(anon_opts)).await?;
        anon.put("/seibo-watch/anon", "x", None).await
    })
    .await
    .expect("the refusal comes within 15 s");
    let err = refused.expect_err("etcd accepted a put without a client certificate");
    eprintln!(
        "etcd-client without certificate refused after {:?}: {err}",
        t.elapsed()
    );
    let keys = client
        .get("/seibo-watch/anon", None)
        .await
        .unwrap()
        .kvs()
        .len();
    assert_eq!(keys, 0);
}

/// Puts `key=value` through `etcdctl` (5 s command timeout) and says how long it took.
fn timed_put(cluster: &EtcdCluster, key: &str, value: &str) -> (Output, Duration) {
    let t = Instant::now();
    let out = cluster.etcdctl(&["put", key, value]);
    (out, t.elapsed())
}

/// Issue 13 (fail closed, art 9.2): with one of three members killed the quorum of two keeps
/// writing; with two down a write fails within a bounded time (etcdctl and `etcd-client`,
/// with and without `require_leader`); once they are restarted, writes succeed again by
/// themselves, through the same clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_kill_one_writes_continue_stop_two_writes_fail_restart_recovers() {
    let mut cluster = EtcdCluster::start(3);
    // One client over all three members, two on m2 (the member that survives) only.
    let mut all = cluster.client().await;
    let m2 = [cluster.endpoint(2)];
    let mut on_m2 = cluster.client_with(&m2, cluster.connect_options()).await;
    let mut on_m2_leader = cluster
        .client_with(&m2, cluster.connect_options().with_require_leader(true))
        .await;
    all.put("/seibo-q/before", "1", None).await.unwrap();
    on_m2_leader
        .put("/seibo-q/before", "2", None)
        .await
        .unwrap();

    // One member down (SIGKILL): writes go on, through etcdctl and the long-lived clients.
    eprintln!("m0 leads before the kill: {}", cluster.leader() == Some(0));
    let t = Instant::now();
    cluster.kill_member(0);
    assert!(!cluster.is_running(0));
    let mut first_ok = None;
    for n in 0..20 {
        let (out, took) = timed_put(&cluster, "/seibo-q/one-down", &n.to_string());
        if out.status.success() {
            first_ok = Some(took);
            break;
        }
        eprintln!("put with m0 killed failed after {took:?}: {}", show(&out));
    }
    let first_ok = first_ok.expect("writes with two of three members");
    eprintln!(
        "timing: first etcdctl put with m0 killed took {first_ok:?} ({:?} after the kill)",
        t.elapsed()
    );
    // The balanced channel over all three endpoints still sends some requests to the dead
    // member (they fail at once with Unavailable "tcp connect error"): a writer must retry.
    let mut failed = Vec::new();
    let mut ok = 0;
    for n in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            all.put("/seibo-q/one-down-client", n.to_string(), None),
        )
        .await
        .expect("etcd-client's own timeout ends the request");
        match r {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    eprintln!(
        "etcd-client over 3 endpoints, m0 killed: {ok} of 20 puts succeeded, {} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 0, "no put through the balanced client: {failed:?}");
    on_m2.put("/seibo-q/one-down-m2", "x", None).await.unwrap();

    // Two down (m0 killed, m1 stopped with SIGTERM): no quorum, writes fail in bounded time.
    cluster.stop_member(1);
    let (out, took) = timed_put(&cluster, "/seibo-q/no-quorum-etcdctl", "x");
    assert!(
        !out.status.success(),
        "a write succeeded with one member of three: {}",
        show(&out)
    );
    assert!(took < Duration::from_secs(10), "etcdctl took {took:?}");
    eprintln!(
        "timing: etcdctl put (5 s command timeout) without quorum failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    for (name, key, client) in [
        ("m2 only", "/seibo-q/no-quorum-m2", &mut on_m2),
        (
            "m2 only, require_leader",
            "/seibo-q/no-quorum-m2-leader",
            &mut on_m2_leader,
        ),
    ] {
        let t = Instant::now();
        let put = tokio::time::timeout(Duration::from_secs(20), client.put(key, "x", None))
            .await
            .expect("etcd-client's own 5 s timeout ends the request");
        let err = put.expect_err("etcd-client wrote with one member of three");
        eprintln!(
            "timing: etcd-client ({name}, 5 s timeout) put without quorum failed after {:?}: {err}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    // Restart both: the cluster and the same clients recover by themselves.
    let t = Instant::now();
    cluster.restart_member(0);
    cluster.restart_member(1);
    let healthy = cluster
        .wait_healthy(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!(
        "timing: healthy {:?} after the restarts began ({healthy:?} of health polling)",
        t.elapsed()
    );
    for (name, client) in [
        ("3 endpoints", &mut all),
        ("m2 only", &mut on_m2),
        ("m2 only, require_leader", &mut on_m2_leader),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = tokio::time::timeout(
                Duration::from_secs(6),
                client.put("/seibo-q/after", "recovered", None),
            )
            .await;
            if matches!(r, Ok(Ok(_))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the client ({name}) did not recover within 30 s: {r:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "timing: etcd-client ({name}) wrote again {:?} after the restarts began ({attempts} attempts)",
            t.elapsed()
        );
    }
    let (out, _) = timed_put(&cluster, "/seibo-q/after-etcdctl", "x");
    assert!(out.status.success(), "{}", show(&out));
    // Nothing acknowledged was lost. A write refused with "no leader" (require_leader) was
    // never proposed: it is absent. A write that timed out has an unknown outcome: the member
    // may have appended it to its log before it lost the quorum, and it is committed when that
    // member leads again (seen here for etcdctl's put) -- a timeout is not a failure.
    let keys = cluster.etcdctl(&["get", "--prefix", "--keys-only", "/seibo-q/"]);
    let keys: Vec<String> = stdout(&keys)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let acknowledged = [
        "/seibo-q/after",
        "/seibo-q/after-etcdctl",
        "/seibo-q/before",
        "/seibo-q/one-down",
        "/seibo-q/one-down-client",
        "/seibo-q/one-down-m2",
    ];
    let timed_out = ["/seibo-q/no-quorum-etcdctl", "/seibo-q/no-quorum-m2"];
    for k in acknowledged {
        assert!(
            keys.iter().any(|x| x == k),
            "acknowledged {k} lost: {keys:?}"
        );
    }
    let late: Vec<&String> = keys
        .iter()
        .filter(|k| !acknowledged.contains(&k.as_str()))
        .collect();
    for k in &late {
        assert!(
            timed_out.contains(&k.as_str()),
            "{k} present but never acknowledged nor timed out: {keys:?}"
        );
    }
    eprintln!("timed-out writes applied after the recovery: {late:?}");
    // Every member holds the same data again.
    for i in 0..3 {
        let get = cluster.etcdctl_at(
            &[cluster.endpoint(i)],
            &["get", "--print-value-only", "/seibo-q/after"],
        );
        assert_eq!(stdout(&get).trim(), "recovered", "m{i}: {}", show(&get));
    }
}

/// gRPC status code of an `etcd-client` error (`tonic::Code` as its number), if it has one.
fn grpc_code(e: &etcd_client::Error) -> Option<i32> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(i32::from(s.code())),
        _ => None,
    }
}

/// gRPC `UNAVAILABLE`: the request never reached a member (connect error to a dead endpoint of
/// the balanced channel) or etcd refused it before proposing it ("etcdserver: no leader" with
/// `require_leader`). Not applied: safe to send again.
const UNAVAILABLE: i32 = 14;

/// Issue 13 ("kill one etcd member under load"): SIGKILL the leader in the middle of a stream
/// of writes from one long-lived client (all three endpoints, `require_leader`, 3 s timeout,
/// as the gateway connects) that resends a write refused as UNAVAILABLE: the two others elect
/// a leader and writes resume by themselves. Every acknowledged write is in etcd afterwards,
/// no UNAVAILABLE attempt was applied, and a write that timed out may or may not have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_writes_elects_another_and_writes_resume() {
    let mut cluster = EtcdCluster::start(3);
    let mut client = cluster
        .client_with(
            &cluster.endpoints(),
            cluster
                .connect_options()
                .with_timeout(Duration::from_secs(3))
                .with_require_leader(true),
        )
        .await;
    let leader = cluster.leader().expect("a leader after start");
    let mut acked = Vec::new();
    for n in 0..20 {
        let k = format!("/seibo-l/before/{n:03}");
        client.put(k.as_str(), "x", None).await.unwrap();
        acked.push(k);
    }
    let killed = Instant::now();
    cluster.kill_member(leader);
    let mut first_ok_after = None;
    let (mut unavailable, mut other_errors) = (Vec::new(), Vec::new());
    let mut timed_out = Vec::new();
    let mut streak = 0;
    let mut n = 0;
    while streak < 20 && killed.elapsed() < Duration::from_secs(30) {
        n += 1;
        let k = format!("/seibo-l/after/{n:04}");
        // One write, resent (at most 10 times) while it is refused as UNAVAILABLE.
        let t = Instant::now();
        let mut outcome = None;
        for attempt in 0..10 {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.put(k.as_str(), attempt.to_string(), None),
            )
            .await
            .expect("etcd-client's own 3 s timeout ends the request");
            match r {
                Ok(_) => {
                    outcome = Some(Ok(()));
                    break;
                }
                Err(e) if grpc_code(&e) == Some(UNAVAILABLE) => {
                    unavailable.push((k.clone(), e.to_string()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    outcome = Some(Err(e));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok(())) => {
                first_ok_after.get_or_insert(killed.elapsed());
                streak += 1;
                acked.push(k);
            }
            Some(Err(e)) => {
                streak = 0;
                eprintln!("write {k} failed after {:?}: {e}", t.elapsed());
                if t.elapsed() >= Duration::from_secs(2) {
                    timed_out.push(k);
                } else {
                    other_errors.push((k, e.to_string()));
                }
            }
            None => {
                streak = 0;
                eprintln!("write {k}: UNAVAILABLE 10 times");
            }
        }
    }
    let first_ok_after = first_ok_after.expect("a write succeeded after the leader was killed");
    assert_eq!(streak, 20, "writes did not settle within 30 s");
    assert!(other_errors.is_empty(), "other errors: {other_errors:?}");
    let new_leader = cluster.leader();
    assert!(
        new_leader.is_some() && new_leader != Some(leader),
        "new leader {new_leader:?} (killed m{leader})"
    );
    let mut kinds: Vec<&str> = unavailable
        .iter()
        .map(|u| {
            if u.1.contains("tcp connect error") {
                "connect error (dead endpoint)"
            } else if u.1.contains("no leader") {
                "no leader"
            } else {
                "other"
            }
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    eprintln!(
        "timing: leader m{leader} killed; first write acknowledged {first_ok_after:?} after the kill; \
         {n} writes, {} UNAVAILABLE attempts resent ({kinds:?}), {} timed out; new leader m{}",
        unavailable.len(),
        timed_out.len(),
        new_leader.unwrap_or(usize::MAX)
    );
    let out = cluster.etcdctl(&["get", "--prefix", "/seibo-l/"]);
    assert!(out.status.success(), "{}", show(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let stored: std::collections::HashMap<&str, &str> = lines
        .chunks(2)
        .map(|kv| (kv[0].as_str(), kv.get(1).map_or("", String::as_str)))
        .collect();
    for k in &acked {
        assert!(stored.contains_key(k.as_str()), "acknowledged {k} lost");
    }
    let applied_anyway: Vec<&String> = timed_out
        .iter()
        .filter(|k| stored.contains_key(k.as_str()))
        .collect();
    eprintln!("timed-out writes applied anyway: {applied_anyway:?}");
    assert_eq!(stored.len(), acked.len() + applied_anyway.len());
    // An UNAVAILABLE attempt was never applied: each acknowledged key holds the value of the
    // attempt that was acknowledged, i.e. the number of UNAVAILABLE refusals before it.
    for k in &acked {
        let refused = unavailable.iter().filter(|u| &u.0 == k).count();
        if k.starts_with("/seibo-l/after/") {
            assert_eq!(stored[k.as_str()], refused.to_string(), "{k}");
        }
    }
}

/// What a watch does when etcd fails, for the gateway's staleness rule (issue 13, "bounded
/// staleness, fail closed"): an idle watch outlives the client's request timeout; a watch
/// whose member is killed ends with an error; on a member that loses the quorum, a watch made
/// with `require_leader` is ended by etcd, while one without it stays open and silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_idle_ends_when_its_member_dies_and_with_require_leader_on_quorum_loss() {
    let mut cluster = EtcdCluster::start(3);
    let opts = || cluster.connect_options().with_require_leader(true);
    let mut on_m1 = cluster.client_with(&[cluster.endpoint(1)], opts()).await;
    let mut on_m2_leader = cluster.client_with(&[cluster.endpoint(2)], opts()).await;
    let mut on_m2_plain = cluster
        .client_with(&[cluster.endpoint(2)], cluster.connect_options())
        .await;
    let wopts = || Some(WatchOptions::new().with_prefix());
    let mut w1 = on_m1.watch("/seibo-w/", wopts()).await.unwrap();
    let mut w2l = on_m2_leader.watch("/seibo-w/", wopts()).await.unwrap();
    let mut w2p = on_m2_plain.watch("/seibo-w/", wopts()).await.unwrap();
    for w in [&mut w1, &mut w2l, &mut w2p] {
        let first = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("watch confirmed")
            .unwrap()
            .unwrap();
        assert!(first.created());
    }

    // Idle for longer than the 5 s request timeout of connect_options: the watches stay.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = cluster.etcdctl(&["put", "/seibo-w/a", "1"]);
    assert!(out.status.success(), "{}", show(&out));
    for w in [&mut w1, &mut w2l, &mut w2p] {
        let m = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("event after 6 s idle")
            .expect("watch open after 6 s idle")
            .expect("watch open after 6 s idle");
        assert_eq!(m.events().len(), 1);
        assert_eq!(m.events()[0].kv().unwrap().key_str().unwrap(), "/seibo-w/a");
    }

    // m1 killed: its watch ends (error or end of stream).
    let t = Instant::now();
    cluster.kill_member(1);
    let r = tokio::time::timeout(Duration::from_secs(30), w1.message())
        .await
        .expect("the watch on a killed member ends within 30 s");
    assert!(
        !matches!(r, Ok(Some(_))),
        "message from a killed member: {r:?}"
    );
    eprintln!(
        "timing: watch on the killed member ended after {:?}: {r:?}",
        t.elapsed()
    );

    // m0 stopped too: m2 alone has no leader.
    let t = Instant::now();
    cluster.stop_member(0);
    let r = tokio::time::timeout(Duration::from_secs(20), w2l.message())
        .await
        .expect("etcd ends a require_leader watch on a member without leader within 20 s");
    let ended = match &r {
        Ok(Some(m)) => m.canceled(),
        Ok(None) | Err(_) => true,
    };
    assert!(ended, "require_leader watch after quorum loss: {r:?}");
    eprintln!(
        "timing: require_leader watch on the isolated member ended {:?} after the quorum was lost: {r:?}",
        t.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_secs(3), w2p.message()).await;
    assert!(
        r.is_err(),
        "a watch without require_leader was expected to stay silent, got {r:?}"
    );
    eprintln!("watch without require_leader on the isolated member: silent and open for 3 s more");
    // And its reads without leader: a linearizable get fails, a serializable one answers.
    let t = Instant::now();
    let lin = tokio::time::timeout(Duration::from_secs(20), on_m2_plain.get("/seibo-w/a", None))
        .await
        .expect("etcd-client's own timeout ends the get");
    eprintln!(
        "linearizable get without quorum after {:?}: {lin:?}",
        t.elapsed()
    );
    assert!(lin.is_err());
    let ser = on_m2_plain
        .get("/seibo-w/a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(ser.kvs()[0].value_str().unwrap(), "1");
}

/// A plain-TCP backend that answers each connection with `<name>\n` and then echoes lines.
struct EchoBackend {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoBackend {
    fn start(name: &'static str) -> EchoBackend {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("test setup");
        listener.set_nonblocking(true).expect("test setup");
        let port = listener.local_addr().expect("test setup").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s, name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoBackend {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listener: connections to the port are refused from now on.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("echo listener thread");
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn echo(s: TcpStream, name: &str) {
    s.set_nonblocking(false).expect("test setup");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("test setup");
    let mut w = s.try_clone().expect("test setup");
    if w.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut r = BufReader::new(s);
    for _ in 0..100 {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if w.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects through `port`, reads the backend's name, checks that a line comes back.
fn via(port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("test setup");
    let mut w = s.try_clone().expect("test setup");
    let mut r = BufReader::new(s);
    let mut name = String::new();
    r.read_line(&mut name).expect("read the backend's name");
    w.write_all(b"ping\n").expect("test setup");
    let mut back = String::new();
    r.read_line(&mut back).expect("read the echo");
    assert_eq!(back, "ping\n", "echo through {port}");
    name.trim().to_string()
}

/// Issue 13 (two gateways of one site behind HAProxy in TCP mode): connections through the
/// frontend reach both backends in turn, bytes pass through unchanged, a backend taken out of
/// rotation (admin socket) gets no new connection, and a dead backend costs no failed
/// connection (redispatch to the other).
#[test]
fn haproxy_tcp_front_reaches_both_backends_and_routes_around_a_dead_one() {
    let mut a = EchoBackend::start("gateway-a");
    let b = EchoBackend::start("gateway-b");
    let h = Haproxy::tcp_front(&[a.port, b.port]);
    assert_eq!(h.backend_port(0), a.port);
    assert_eq!(h.backend_port(1), b.port);
    assert_eq!(via(h.backend_port(1)), "gateway-b", "direct to a backend");

    let names: Vec<String> = (0..6).map(|_| via(h.port())).collect();
    let a_count = names.iter().filter(|n| *n == "gateway-a").count();
    let b_count = names.iter().filter(|n| *n == "gateway-b").count();
    assert_eq!((a_count, b_count), (3, 3), "round robin: {names:?}");

    h.disable(0);
    let names: Vec<String> = (0..4).map(|_| via(h.port())).collect();
    assert!(
        names.iter().all(|n| n == "gateway-b"),
        "g0 disabled: {names:?}"
    );
    h.enable(0);
    let names: Vec<String> = (0..4).map(|_| via(h.port())).collect();
    assert!(
        names.iter().any(|n| n == "gateway-a"),
        "g0 enabled: {names:?}"
    );

    a.stop();
    let t = Instant::now();
    let names: Vec<String> = (0..6).map(|_| via(h.port())).collect();
    assert!(
        names.iter().all(|n| n == "gateway-b"),
        "with gateway-a dead: {names:?}"
    );
    eprintln!(
        "timing: 6 connections with one backend dead took {:?}",
        t.elapsed()
    );
}

/// The same with `option tcp-check`: a dead backend is marked down by the checks and skipped.
#[test]
fn haproxy_tcp_front_with_health_checks_marks_a_dead_backend_down() {
    let mut a = EchoBackend::start("gateway-a");
    let b = EchoBackend::start("gateway-b");
    let h = Haproxy::tcp_front_with(
        &[a.port, b.port],
        HaproxyOptions {
            health_check: Some(Duration::from_millis(200)),
            ..HaproxyOptions::default()
        },
    );
    let names: Vec<String> = (0..4).map(|_| via(h.port())).collect();
    assert!(names.iter().any(|n| n == "gateway-a"), "{names:?}");
    assert!(names.iter().any(|n| n == "gateway-b"), "{names:?}");
    a.stop();
    let t = Instant::now();
    common::eventually(Duration::from_secs(10), "g0 marked DOWN", || {
        let state = h.admin("show servers state gateways");
        // Columns: be_id be_name srv_id srv_name srv_addr srv_op_state ... (0 = stopped).
        state
            .lines()
            .filter(|l| l.contains(" g0 "))
            .any(|l| l.split_whitespace().nth(5) == Some("0"))
    })
    .unwrap();
    eprintln!("timing: dead backend marked down after {:?}", t.elapsed());
    let names: Vec<String> = (0..4).map(|_| via(h.port())).collect();
    assert!(names.iter().all(|n| n == "gateway-b"), "{names:?}");
}
