//! HAProxy (Debian's 2.6) in **TCP mode** in front of several gateways of one site (issue 13):
//! TLS passes through untouched, so mutual TLS stays end to end between the client and the
//! gateway that HAProxy picked.
//!
//! `balance roundrobin` over the backends in the order given (`g0`, `g1`, ...); a connection
//! that cannot be made to one backend is retried on another (`retries 3`, `option redispatch
//! 1`), so a killed gateway costs no failed connection. Health checks are off by default: a
//! TCP check opens and closes a connection without a TLS handshake, which a gateway counts as a
//! refused handshake; [`HaproxyOptions::health_check`] turns `option tcp-check` on.
//!
//! To send a connection to one gateway: connect to that gateway's own port (the tests know it),
//! or take the others out of rotation through HAProxy's admin socket with
//! [`Haproxy::disable`] / [`Haproxy::enable`].
//!
//! Every wait is bounded in time; a missing `haproxy` binary fails the test.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_for_tcp};

/// Tunables of [`Haproxy::tcp_front_with`].
#[derive(Debug, Clone, Copy)]
pub struct HaproxyOptions {
    /// `option tcp-check` with this check interval (`fall 2 rise 1`); `None`: no checks.
    pub health_check: Option<Duration>,
    /// `timeout client` and `timeout server` (idle keep-alive connections live this long).
    pub idle_timeout: Duration,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        HaproxyOptions {
            health_check: None,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A running HAProxy with one TCP frontend on `127.0.0.1:port()` (see the module documentation).
pub struct Haproxy {
    dir: tempfile::TempDir,
    port: u16,
    backends: Vec<u16>,
    child: Option<Child>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis().max(1)
}

impl Haproxy {
    /// HAProxy in TCP mode on a free loopback port, round robin over `127.0.0.1:<backends>`.
    pub fn tcp_front(backends: &[u16]) -> Haproxy {
        Haproxy::tcp_front_with(backends, HaproxyOptions::default())
    }

    /// [`Haproxy::tcp_front`] with health checks or another idle timeout.
    pub fn tcp_front_with(backends: &[u16], options: HaproxyOptions) -> Haproxy {
        assert!(!backends.is_empty(), "HAProxy needs at least one backend");
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join("haproxy").is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`haproxy` is not installed: run scripts/install-test-tools (Debian's haproxy)"
        );
        let dir = tempfile::Builder::new()
            .prefix("seibo-haproxy-")
            .tempdir()
            .expect("tempdir for haproxy");
        let port = free_port();
        let d = dir.path();
        let idle = ms(options.idle_timeout);
        let mut cfg = format!(
            "global\n\
             \x20 maxconn 2000\n\
             \x20 stats socket {sock} mode 600 level admin\n\
             \x20 log stderr format raw local0 info\n\
             defaults\n\
             \x20 mode tcp\n\
             \x20 log global\n\
             \x20 option tcplog\n\
             \x20 timeout connect 1s\n\
             \x20 timeout client {idle}ms\n\
             \x20 timeout server {idle}ms\n\
             \x20 timeout check 1s\n\
             \x20 retries 3\n\
             \x20 option redispatch 1\n\
             frontend front\n\
             \x20 bind 127.0.0.1:{port}\n\
             \x20 default_backend gateways\n\
             backend gateways\n\
             \x20 balance roundrobin\n",
            sock = d.join("admin.sock").display(),
        );
        let check = match options.health_check {
            Some(every) => {
                cfg.push_str("  option tcp-check\n");
                format!(" check inter {}ms fall 2 rise 1", ms(every))
            }
            None => String::new(),
        };
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server g{i} 127.0.0.1:{b}{check}\n"));
        }
        let cfg_path = d.join("haproxy.cfg");
        fs::write(&cfg_path, &cfg).expect("write haproxy.cfg");

        let check_out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg_path)
            .output()
            .expect("run haproxy -c");
        assert!(
            check_out.status.success(),
            "haproxy -c refused the configuration:\n{cfg}\n{}{}",
            String::from_utf8_lossy(&check_out.stdout),
            String::from_utf8_lossy(&check_out.stderr)
        );

        let log = fs::File::create(d.join("haproxy.log")).expect("haproxy log");
        let log2 = log.try_clone().expect("haproxy log");
        // -db: foreground, no daemon, so the child's PID is HAProxy's.
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn haproxy");
        let mut h = Haproxy {
            dir,
            port,
            backends: backends.to_vec(),
            child: Some(child),
        };
        let up = wait_for_tcp(port, Duration::from_secs(10));
        let running = h
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        assert!(
            up && running,
            "haproxy did not listen on 127.0.0.1:{port}:\n{}",
            h.logs()
        );
        h
    }

    /// The frontend's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Backend `i`'s own port (to reach that gateway directly, bypassing HAProxy).
    pub fn backend_port(&self, i: usize) -> u16 {
        self.backends[i]
    }

    /// HAProxy's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The working directory (configuration, admin socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Sends one command to HAProxy's admin socket and returns its answer.
    pub fn admin(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.admin_socket()).expect("connect haproxy admin socket");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("socket timeout");
        s.write_all(format!("{command}\n").as_bytes())
            .expect("write haproxy admin command");
        let mut answer = String::new();
        // HAProxy closes the socket after one command (non-interactive mode).
        let _ = s.read_to_string(&mut answer);
        answer
    }

    /// Takes backend `i` out of rotation (`disable server gateways/g<i>`): new connections go
    /// to the others; connections already open stay where they are.
    pub fn disable(&self, i: usize) {
        let a = self.admin(&format!("disable server gateways/g{i}"));
        assert!(a.trim().is_empty(), "haproxy refused to disable g{i}: {a}");
    }

    /// Puts backend `i` back into rotation.
    pub fn enable(&self, i: usize) {
        let a = self.admin(&format!("enable server gateways/g{i}"));
        assert!(a.trim().is_empty(), "haproxy refused to enable g{i}: {a}");
    }

    /// HAProxy's log (one line per closed connection, `option tcplog`).
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Stops HAProxy (SIGKILL) and waits, bounded, until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("haproxy log at the failure:\n{}", self.logs());
        }
        self.stop();
    }
}
