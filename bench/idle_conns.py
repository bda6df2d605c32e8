#!/usr/bin/env python3
"""Opens N idle mutual-TLS connections to one proxy and reports its memory growth per connection.

Each connection completes the handshake (client certificate), sends one keep-alive GET and reads
the response (so the proxy has really accepted it as a client and allocated what a served
connection holds), then stays idle. Bounded: at most N connections, CONCURRENCY handshakes at a
time, and a hard deadline. The proxy's memory is the sum of VmRSS over the PIDs given (its
processes: master and workers), read before and after, with the connections held open.

Usage: idle_conns.py HOST PORT CA CERT KEY PATH N DEADLINE_S PID[,PID...]
Prints one JSON object.
"""

import asyncio
import json
import ssl
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def expand(pid_arg):
    """The given PIDs plus their children (nginx workers)."""
    pids = set()
    for p in pid_arg.split(","):
        p = int(p)
        pids.add(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.update(int(c) for c in f.read().split())
        except FileNotFoundError:
            pass
    return sorted(pids)


async def main():
    host, port, ca, cert, key, path = sys.argv[1:7]
    n, deadline_s = int(sys.argv[7]), float(sys.argv[8])
    pids = expand(sys.argv[9])
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()

    await asyncio.sleep(0.5)
    before = rss_kib(pids)
    deadline = time.monotonic() + deadline_s
    sem = asyncio.Semaphore(64)
    conns = []
    errors = {}

    async def open_one():
        async with sem:
            if time.monotonic() > deadline:
                errors["deadline"] = errors.get("deadline", 0) + 1
                return
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port), ssl=ctx), timeout=10
                )
                w.write(request)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout=10)
                status = head.split(b" ", 2)[1]
                length = 0
                chunked = False
                for line in head.split(b"\r\n"):
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                    if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
                        chunked = True
                if chunked:
                    while True:
                        size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                        await r.readexactly(size + 2)
                        if size == 0:
                            break
                else:
                    await r.readexactly(length)
                if status != b"200":
                    errors[status.decode()] = errors.get(status.decode(), 0) + 1
                conns.append((r, w))
            except Exception as e:  # noqa: BLE001 - counted and reported
                name = type(e).__name__
                errors[name] = errors.get(name, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    opened_s = time.monotonic() - t0
    await asyncio.sleep(2.0)
    after = rss_kib(pids)
    # Still open? A closed connection has EOF pending.
    alive = 0
    for r, _ in conns:
        if not r.at_eof():
            alive += 1
    for _, w in conns:
        w.close()
    opened = len(conns)
    per = (after - before) / opened if opened else None
    print(
        json.dumps(
            {
                "requested": n,
                "opened": opened,
                "alive_at_measure": alive,
                "open_seconds": round(opened_s, 2),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_conn": round(per, 2) if per is not None else None,
                "errors": errors,
                "pids": pids,
            }
        )
    )


asyncio.run(main())
