#!/usr/bin/env python3
"""Issue 13's propagation and admin-latency measurement, driven by bench/registry.

  registry_prop.py GATE_BIN CONFIG_A PORT_B CA CERT KEY N PATIENT_PREFIX [--no-poll]

For i in 1..N: `consent grant` of patient PATIENT_PREFIX+i through A's admin command (timed);
B serves it on an open keep-alive connection (polled, bounded); then `consent withdraw` through
A (timed), and the time from that command's return to B's first 403 on the same keep-alive
connection. With --no-poll (sled comparison: A alone) only the admin round trips are timed.
Prints one line per figure: `admin_grant`, `admin_withdraw`, `propagation` with p50/p99/max ms.
"""
import http.client
import ssl
import subprocess
import sys
import time

POLL_LIMIT = 10.0  # seconds per change, then the change counts as not propagated


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def line(name, xs, extra=""):
    print(f"{name} n={len(xs)} p50_ms={pct(xs, 50):.1f} p99_ms={pct(xs, 99):.1f} "
          f"max_ms={max(xs) if xs else float('nan'):.1f}{extra}", flush=True)


class Poller:
    """One keep-alive mutual-TLS connection to gateway B."""

    def __init__(self, port, ca, cert, key):
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.check_hostname = False
        self.ctx.load_cert_chain(cert, key)
        self.port = port
        self.reconnects = -1
        self.requests = 0
        self.conn = None

    def status(self, path):
        for _ in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                                        timeout=5)
                self.reconnects += 1
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                r.read()
                self.requests += 1
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
        raise RuntimeError(f"gateway B on port {self.port} does not answer")

    def until(self, path, want):
        """Polls (bounded) until `path` answers `want`; returns the seconds it took or None."""
        start = time.monotonic()
        self.polls = 0
        while time.monotonic() - start < POLL_LIMIT:
            self.polls += 1
            if self.status(path) == want:
                return time.monotonic() - start
        return None


def admin(gate, config, *args):
    t = time.monotonic()
    out = subprocess.run([gate, *args, "--config", config], capture_output=True, text=True,
                         timeout=60)
    dt = (time.monotonic() - t) * 1000
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {out.returncode}: {out.stderr[-400:]}")
    return dt


def main():
    gate, cfg, port_b, ca, cert, key, n, pp = sys.argv[1:9]
    n, poll = int(n), "--no-poll" not in sys.argv
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 9 * 3600))
    poller = Poller(int(port_b), ca, cert, key) if poll else None
    grants, withdraws, prop, lost, first = [], [], [], 0, 0
    for i in range(1, n + 1):
        patient = f"{pp}{i:04d}"
        path = f"/patients/{patient}/labs"
        grants.append(admin(gate, cfg, "consent", "grant", "--patient", patient, "--by", "patient",
                            "--published", today, "--form-ref", f"bench-{patient}"))
        if poll and poller.until(path, 200) is None:
            raise RuntimeError(f"B never served {path} after the grant")
        withdraws.append(admin(gate, cfg, "consent", "withdraw", "--patient", patient,
                               "--form-ref", f"w-{patient}"))
        if poll:
            t = poller.until(path, 403)
            if t is None:
                lost += 1
            else:
                prop.append(t * 1000)
                first += poller.polls == 1
    line("admin_grant", grants)
    line("admin_withdraw", withdraws)
    if poll:
        line("propagation", prop, f" not_within_{POLL_LIMIT:.0f}s={lost} "
             f"refused_at_first_request={first} requests={poller.requests} "
             f"reconnects={poller.reconnects}")


if __name__ == "__main__":
    main()
