#!/usr/bin/env python3
"""Reads the raw oha JSON files of bench/run and prints the table; writes the results JSON.

  summarize.py median-rps RAW_DIR PHASE CONTENDER   -> integer median req/s
  summarize.py report RAW_DIR OUT.json [options]    -> table on stdout, JSON to OUT.json
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import statistics
import sys

PROXIES = ["seibo-gate", "nginx", "haproxy"]
CONTENDERS = PROXIES + ["direct"]
MIB = 1 << 20


def load_runs(raw, phase, contender):
    runs = []
    for path in glob.glob(os.path.join(raw, f"{phase}-{contender}-*.json")):
        m = re.search(r"-(\d+)\.json$", path)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
        runs.append((int(m.group(1)), data))
    runs.sort(key=lambda r: r[0])
    return runs


def ok_count(d):
    return int((d.get("statusCodeDistribution") or {}).get("200", 0))


def bad_count(d):
    codes = d.get("statusCodeDistribution") or {}
    # Requests still in flight when the duration ends are cut by oha itself: not an error.
    errs = {k: v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
    return sum(v for k, v in codes.items() if k != "200") + sum(errs.values())


def rps(d):
    # Successful (200) responses per second: a refusal is no served request.
    total = d["summary"]["total"]
    return ok_count(d) / total if total else 0.0


def pct_ms(d, p):
    v = (d.get("latencyPercentiles") or {}).get(p)
    return v * 1000.0 if v is not None else None


def series(raw, phase, contender, f):
    out = {}
    for rnd, d in load_runs(raw, phase, contender):
        if d is None:
            continue
        try:
            v = f(d)
        except (KeyError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            out[rnd] = v
    return out


def stat(values):
    vals = list(values.values()) if isinstance(values, dict) else list(values)
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "rounds": vals,
    }


def fmt(s, digits=0):
    if s is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f.format(s["median"])
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def ratio(a, b):
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_mib": mem,
        "kernel": platform.release(),
    }


def median_rps(raw, phase, contender):
    s = stat(series(raw, phase, contender, rps))
    print(int(s["median"]) if s else 0)


def report(a):
    raw = a.raw
    m = {}  # metric -> contender -> stat
    rows = []  # (label, metric key, digits, better)

    def add(key, label, phase, f, digits, better, who=CONTENDERS):
        m[key] = {c: stat(series(raw, phase, c, f)) for c in who}
        rows.append((label, key, digits, better))

    add("keepalive_rps", f"keep-alive req/s (c={a.conns})", "keepalive", rps, 0, "higher")
    add("keepalive_p50_ms", "keep-alive p50 ms", "keepalive", lambda d: pct_ms(d, "p50"), 3, "lower")
    add("keepalive_p99_ms", "keep-alive p99 ms", "keepalive", lambda d: pct_ms(d, "p99"), 3, "lower")
    add("keepalive_p999_ms", "keep-alive p99.9 ms", "keepalive", lambda d: pct_ms(d, "p99.9"), 3, "lower")
    def cpu_us_per_req(phase):
        def f_for(c):
            out = {}
            for rnd, d in load_runs(raw, phase, c):
                try:
                    with open(os.path.join(raw, f"{phase}-{c}-{rnd}.json.cpu")) as f:
                        ticks, hz = (int(x) for x in f.read().split())
                    out[rnd] = ticks / hz * 1e6 / ok_count(d)
                except (OSError, ValueError, TypeError, ZeroDivisionError):
                    pass
            return out
        return {c: stat(f_for(c)) for c in CONTENDERS}

    m["keepalive_cpu_us_per_req"] = cpu_us_per_req("keepalive")
    rows.append(("keep-alive proxy CPU µs per request", "keepalive_cpu_us_per_req", 1, "lower"))
    add("rate_rps", f"fixed rate: achieved req/s (target {a.rate})", "rate", rps, 0, "higher")
    add("rate_p50_ms", "fixed rate p50 ms", "rate", lambda d: pct_ms(d, "p50"), 3, "lower")
    add("rate_p99_ms", "fixed rate p99 ms", "rate", lambda d: pct_ms(d, "p99"), 3, "lower")
    # Added p99 latency: per round, proxy minus direct (same round, adjacent in time).
    direct = series(raw, "rate", "direct", lambda d: pct_ms(d, "p99"))
    m["rate_added_p99_ms"] = {}
    for c in PROXIES:
        own = series(raw, "rate", c, lambda d: pct_ms(d, "p99"))
        m["rate_added_p99_ms"][c] = stat({r: v - direct[r] for r, v in own.items() if r in direct})
    m["rate_added_p99_ms"]["direct"] = None
    rows.append(("fixed rate p99 added over direct ms", "rate_added_p99_ms", 3, "lower"))
    add("handshake_rps", "new-handshake req/s (no keep-alive)", "handshake", rps, 0, "higher")
    m["handshake_cpu_us_per_req"] = cpu_us_per_req("handshake")
    rows.append(("new-handshake proxy CPU µs per request", "handshake_cpu_us_per_req", 1, "lower"))
    add("handshake8_rps", "new-handshake req/s, 8 connections", "handshake8", rps, 0, "higher")
    add(
        "download_mib_s",
        f"1 MiB download MiB/s (c={a.dl_conns})",
        "download",
        lambda d: ok_count(d) / d["summary"]["total"] if ok_count(d) else None,
        0,
        "higher",
    )
    # Few connections (issue 16): p50/p99 in µs at 1 and 8 keep-alive connections.
    us = lambda p: (lambda d: pct_ms(d, p) * 1000.0 if pct_ms(d, p) is not None else None)
    for phase, what in [("lat1", "1 conn"), ("lat8", "8 conns"), ("lat1slow", "1 conn, 2 ms EMR"),
                        ("lat8slow", "8 conns, 2 ms EMR")]:
        add(f"{phase}_p50_us", f"{what}: p50 µs", phase, us("p50"), 0, "lower")
        add(f"{phase}_p99_us", f"{what}: p99 µs", phase, us("p99"), 0, "lower")
        if phase.startswith("lat8"):
            add(f"{phase}_rps", f"{what}: req/s", phase, rps, 0, "higher")
    add("h2_keepalive_rps", f"HTTP/2 keep-alive req/s ({a.h2} streams)", "h2keepalive", rps, 0, "higher", PROXIES)
    add("h2_keepalive_p50_ms", "HTTP/2 keep-alive p50 ms", "h2keepalive", lambda d: pct_ms(d, "p50"), 3, "lower", PROXIES)
    m["h2_keepalive_cpu_us_per_req"] = cpu_us_per_req("h2keepalive")
    rows.append(("HTTP/2 keep-alive proxy CPU µs per request", "h2_keepalive_cpu_us_per_req", 1, "lower"))
    shared_rows = len(rows)

    # "One core each" (taskset): the proxy on CPU 0, oha + upstream on CPU 1.
    pin_rows = []
    add("pin_keepalive_rps", f"req/s per proxy core, keep-alive (c={a.conns})", "pin-keepalive", rps, 0, "higher")
    m["pin_keepalive_cpu_us_per_req"] = cpu_us_per_req("pin-keepalive")
    rows.append(("proxy CPU µs per request", "pin_keepalive_cpu_us_per_req", 1, "lower"))
    add("pin_rate_rps", f"fixed rate: achieved req/s (target {a.pin_rate})", "pin-rate", rps, 0, "higher")
    add("pin_rate_p50_ms", "fixed rate p50 ms", "pin-rate", lambda d: pct_ms(d, "p50"), 3, "lower")
    add("pin_rate_p99_ms", "fixed rate p99 ms", "pin-rate", lambda d: pct_ms(d, "p99"), 3, "lower")
    pdirect = series(raw, "pin-rate", "direct", lambda d: pct_ms(d, "p99"))
    m["pin_rate_added_p99_ms"] = {"direct": None}
    for c in PROXIES:
        own = series(raw, "pin-rate", c, lambda d: pct_ms(d, "p99"))
        m["pin_rate_added_p99_ms"][c] = stat({r: v - pdirect[r] for r, v in own.items() if r in pdirect})
    rows.append(("fixed rate p99 added over direct ms", "pin_rate_added_p99_ms", 3, "lower"))
    pin_rows = rows[shared_rows:]
    del rows[shared_rows:]
    fsync = {}
    try:
        with open(os.path.join(raw, "fsync.json")) as f:
            fsync = json.load(f)
    except (OSError, ValueError):
        pass
    m["fdatasync_us"] = fsync

    # WireGuard: seibo-gate's tunnel in the seibo-gate column, wireguard-go + nginx in nginx's.
    wg_who = ["seibo-gate", "nginx"]
    add("wg_keepalive_rps", f"WireGuard keep-alive req/s (c={a.conns})", "wg-keepalive", rps, 0, "higher", wg_who)
    add(
        "wg_download_mib_s",
        f"WireGuard 1 MiB download MiB/s (c={a.dl_conns})",
        "wg-download",
        lambda d: ok_count(d) / d["summary"]["total"] if ok_count(d) else None,
        0,
        "higher",
        wg_who,
    )

    hwm = {}
    try:
        with open(os.path.join(raw, "hwm.txt")) as f:
            for line in f:
                c, v = line.split()
                hwm[c] = int(v) / 1024.0
    except OSError:
        pass
    m["peak_rss_mib"] = {c: stat([hwm[c]]) if c in hwm else None for c in CONTENDERS}
    rows.append(("peak RSS under load MiB (VmHWM)", "peak_rss_mib", 1, "lower"))

    idle = {}
    for c in PROXIES:
        try:
            with open(os.path.join(raw, f"idle-{c}.json")) as f:
                idle[c] = json.load(f)
        except (OSError, ValueError):
            pass
    m["idle_kib_per_conn"] = {
        c: stat([idle[c]["kib_per_conn"]]) if idle.get(c, {}).get("kib_per_conn") is not None else None
        for c in CONTENDERS
    }
    rows.append((f"memory per idle mTLS connection KiB (n={a.idle_conns})", "idle_kib_per_conn", 1, "lower"))

    bad = {
        phase: {c: sum(bad_count(d) for _, d in load_runs(raw, phase, c) if d) for c in CONTENDERS}
        for phase in ["keepalive", "rate", "handshake", "handshake8", "download", "wg-keepalive", "wg-download",
                      "lat1", "lat8", "lat1slow", "lat8slow", "h2keepalive", "pin-keepalive", "pin-rate"]
    }
    missing = {
        phase: {c: sum(1 for _, d in load_runs(raw, phase, c) if d is None) for c in CONTENDERS}
        for phase in ["keepalive", "rate", "handshake", "download"]
    }

    # ---- tables ----
    cols = CONTENDERS + ["gate/nginx", "gate/haproxy"]
    label_w = max(len(r[0]) for r in rows + pin_rows) + 1
    out = []

    def table(title, rows):
        cells = []
        for label, key, digits, better in rows:
            row = [fmt(m[key].get(c), digits) for c in CONTENDERS]
            for other in ["nginx", "haproxy"]:
                rr = ratio(m[key].get("seibo-gate"), m[key].get(other))
                row.append(f"{rr:.2f}x" if rr is not None else "-")
            cells.append((label + (" ↑" if better == "higher" else " ↓"), row))
        widths = [max(len(c), *(len(r[i]) for _, r in cells)) for i, c in enumerate(cols)]
        line = "-" * (label_w + 2 + sum(w + 2 for w in widths))
        out.append(line)
        out.append(title.ljust(label_w + 2) + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        out.append(line)
        for label, row in cells:
            out.append(label.ljust(label_w + 2) + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
        out.append(line)

    table("shared cores (2)", rows)
    if any(m[k].get(c) for _, k, _, _ in pin_rows for c in CONTENDERS):
        table("one core each (taskset)", pin_rows)
        out.append(
            "one core each: every proxy pinned to CPU 0 (all threads/processes), oha, the upstream "
            "and the 2 ms EMR to CPU 1; fixed rate = 50% of nginx's one-core peak"
        )
    if fsync:
        out.append(
            f"this disk's fdatasync (append + fdatasync in the audit directory, n={fsync.get('n')}): "
            f"p50 {fsync.get('p50_us', 0):.0f} µs, p99 {fsync.get('p99_us', 0):.0f} µs "
            "(the physical floor of a durable audit record)"
        )
    out.append(
        f"wireguard: {a.wireguard} (nginx column = wireguard-go VPN + nginx reverse proxy, plain "
        "HTTP inside the VPN; seibo-gate = its WireGuard ingress, TLS inside the tunnel)"
    )
    out.append(
        f"medians of {a.rounds} interleaved rounds (min-max); ↑ higher is better, ↓ lower is better; "
        f"ratios are medians of seibo-gate over the contender"
    )
    errs = {p: {c: n for c, n in v.items() if n} for p, v in bad.items()}
    errs = {p: v for p, v in errs.items() if v}
    if errs:
        out.append(f"non-200 responses or errors (excluded from req/s): {json.dumps(errs)}")
    miss = {p: {c: n for c, n in v.items() if n} for p, v in missing.items()}
    miss = {p: v for p, v in miss.items() if v}
    if miss:
        out.append(f"runs with no result: {json.dumps(miss)}")
    for c, d in idle.items():
        if d.get("requested") != a.idle_conns:
            out.append(f"idle {c}: {d.get('requested')} connections (file descriptor limit)")
        if d.get("opened") != d.get("requested") or d.get("alive_at_measure") != d.get("opened"):
            out.append(
                f"idle {c}: {d.get('opened')} of {d.get('requested')} opened, "
                f"{d.get('alive_at_measure')} alive at measurement, errors {d.get('errors')}"
            )

    # ---- targets ----
    def tgt(name, ok, detail):
        status = "n/a" if ok is None else ("met" if ok else "MISSED")
        return {"target": name, "status": status, "detail": detail}

    def med(key, c):
        s = m[key].get(c)
        return s["median"] if s else None

    targets = []
    r1, r2 = ratio(m["keepalive_rps"]["seibo-gate"], m["keepalive_rps"]["nginx"]), ratio(
        m["keepalive_rps"]["seibo-gate"], m["keepalive_rps"]["haproxy"]
    )
    targets.append(
        tgt(
            "keep-alive req/s >= 1.2x nginx and >= 1.2x HAProxy",
            None if r1 is None or r2 is None else (r1 >= 1.2 and r2 >= 1.2),
            f"{r1 or 0:.2f}x nginx, {r2 or 0:.2f}x HAProxy",
        )
    )
    added = med("rate_added_p99_ms", "seibo-gate")
    targets.append(
        tgt(
            f"p99 added latency <= 1 ms at {a.rate} req/s",
            None if added is None else added <= 1.0,
            f"{added:.3f} ms" if added is not None else "n/a",
        )
    )
    h = ratio(m["handshake_rps"]["seibo-gate"], m["handshake_rps"]["nginx"])
    targets.append(
        tgt("new-handshake req/s >= nginx", None if h is None else h >= 1.0, f"{h or 0:.2f}x nginx")
    )
    h8 = ratio((m.get("handshake8_rps") or {}).get("seibo-gate"), (m.get("handshake8_rps") or {}).get("nginx"))
    targets.append(
        tgt("new-handshake req/s >= nginx at 8 connections", None if h8 is None else h8 >= 1.0,
            f"{h8:.2f}x nginx" if h8 is not None else "not measured")
    )
    ik = med("idle_kib_per_conn", "seibo-gate")
    targets.append(
        tgt(
            "<= 32 KiB per idle mTLS connection",
            None if ik is None else ik <= 32,
            f"{ik:.1f} KiB" if ik is not None else "n/a",
        )
    )
    r3 = ratio(m["h2_keepalive_rps"]["seibo-gate"], m["h2_keepalive_rps"]["nginx"])
    r4 = ratio(m["h2_keepalive_rps"]["seibo-gate"], m["h2_keepalive_rps"]["haproxy"])
    targets.append(
        tgt(
            "HTTP/2 keep-alive req/s >= 1.2x nginx and >= 1.2x HAProxy",
            None if r3 is None or r4 is None else (r3 >= 1.2 and r4 >= 1.2),
            f"{r3 or 0:.2f}x nginx, {r4 or 0:.2f}x HAProxy",
        )
    )
    cg, cn = med("keepalive_cpu_us_per_req", "seibo-gate"), med("keepalive_cpu_us_per_req", "nginx")
    targets.append(
        tgt(
            "proxy CPU per keep-alive request <= nginx's",
            None if cg is None or cn is None else cg <= cn,
            f"{cg or 0:.1f} vs {cn or 0:.1f} µs",
        )
    )
    g1, n1 = med("lat1_p50_us", "seibo-gate"), med("lat1_p50_us", "nginx")
    fs = fsync.get("p50_us")
    targets.append(
        tgt(
            "p50 at 1 connection, instant EMR, within one fdatasync of nginx's",
            None if g1 is None or n1 is None or fs is None else g1 - n1 <= fs,
            f"+{(g1 or 0) - (n1 or 0):.0f} µs (fdatasync p50 {fs or 0:.0f} µs)",
        )
    )
    g2, n2 = med("lat1slow_p50_us", "seibo-gate"), med("lat1slow_p50_us", "nginx")
    targets.append(
        tgt(
            "p50 at 1 connection, 2 ms EMR, within +50 µs of nginx's",
            None if g2 is None or n2 is None else g2 - n2 <= 50,
            f"+{(g2 or 0) - (n2 or 0):.0f} µs",
        )
    )
    pa = med("pin_rate_added_p99_ms", "seibo-gate")
    targets.append(
        tgt(
            f"one core each: p99 added <= 1 ms at {a.pin_rate} req/s",
            None if pa is None else pa <= 1.0,
            f"{pa:.3f} ms (nginx {med('pin_rate_added_p99_ms', 'nginx') or 0:.3f})" if pa is not None else "n/a",
        )
    )
    w1 = ratio(m["wg_keepalive_rps"].get("seibo-gate"), m["wg_keepalive_rps"].get("nginx"))
    w2 = ratio(m["wg_download_mib_s"].get("seibo-gate"), m["wg_download_mib_s"].get("nginx"))
    targets.append(
        tgt(
            "WireGuard >= 1.0x wireguard-go + nginx in req/s and throughput",
            None if w1 is None or w2 is None else (w1 >= 1.0 and w2 >= 1.0),
            f"{w1:.2f}x req/s, {w2:.2f}x MiB/s" if w1 and w2 else a.wireguard,
        )
    )
    out.append("targets:")
    for t in targets:
        out.append(f"  [{t['status']}] {t['target']}: {t['detail']}")
    out.append(
        f"load average (1 min): {a.load_before} before, {a.load_after} after the load phases; "
        f"run took {a.seconds}s"
    )
    print("\n".join(out))

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "seibo_gate_version": a.gate_version,
        "config": {
            "rounds": a.rounds,
            "duration_s": a.dur,
            "connections": a.conns,
            "download_connections": a.dl_conns,
            "fixed_rate_rps": a.rate,
            "idle_connections": a.idle_conns,
            "http2": a.h2,
            "one_core_fixed_rate_rps": a.pin_rate,
            "workers": 2,
        },
        "load_average": {"before": a.load_before, "after": a.load_after},
        "metrics": m,
        "idle": idle,
        "non_200_or_errors": bad,
        "targets": targets,
        "wireguard": a.wireguard,
        "table": out,
        "seconds": a.seconds,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "median-rps":
        median_rps(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["report"])
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--rounds", type=int)
    p.add_argument("--dur", type=int)
    p.add_argument("--conns", type=int)
    p.add_argument("--dl-conns", type=int)
    p.add_argument("--rate", type=int)
    p.add_argument("--idle-conns", type=int)
    p.add_argument("--h2", default="")
    p.add_argument("--pin-rate", type=int, default=0)
    p.add_argument("--load-before", default="")
    p.add_argument("--load-after", default="")
    p.add_argument("--wireguard", default="")
    p.add_argument("--gate-version", default="")
    p.add_argument("--seconds", type=int)
    report(p.parse_args())


main()
