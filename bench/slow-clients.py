#!/usr/bin/env python3
"""Slow clients against a running sidecar-proxy: N connections that send their headers and
then one body byte every 2 s. Prints the proxy's RSS, open descriptors and /health latency
before, during and after, the connection metrics, and how each connection ended.

    (ulimit -n 2048; SIDECAR_BODY_TIMEOUT=10 ... sidecar-proxy &)
    python3 bench/slow-clients.py 127.0.0.1:9190 127.0.0.1:9191 5000 <proxy pid>

The load generator needs more descriptors than N (`ulimit -n 10000` in its shell).
"""
import asyncio, sys, time, urllib.request, os
api, ops, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
pid = int(sys.argv[4])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return l.split()[1]
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
def health():
    t=time.time()
    try:
        r=urllib.request.urlopen(f"http://{ops}/health", timeout=5); code=r.status
    except Exception as e: code=str(e)
    return code, round((time.time()-t)*1000,1)
async def slow(host, port, results):
    try:
        r,w = await asyncio.open_connection(host, port)
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        await w.drain()
        data = await asyncio.wait_for(r.read(200), 60)
        results.append(data[:12])
    except Exception as e:
        results.append(type(e).__name__)
async def trickle(host, port, results):
    try:
        r,w = await asyncio.open_connection(host, port)
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        await w.drain()
        t=time.time()
        async def feed():
            while True:
                await asyncio.sleep(2); w.write(b" "); await w.drain()
        f=asyncio.create_task(feed())
        data = await asyncio.wait_for(r.read(200), 60)
        f.cancel()
        results.append((data[:12], round(time.time()-t)))
    except Exception as e:
        results.append(type(e).__name__)
async def main():
    host, port = api.split(":")
    print("before: rss_kb", rss(), "fds", fds(), "health", health())
    res=[]
    tasks=[asyncio.create_task(trickle(host, int(port), res)) for _ in range(n)]
    await asyncio.sleep(3)
    print("during: rss_kb", rss(), "fds", fds(), "health", health())
    m = urllib.request.urlopen(f"http://{ops}/metrics").read().decode()
    print([l for l in m.splitlines() if l.startswith("sidecar_connections")])
    await asyncio.gather(*tasks)
    from collections import Counter
    print("results", Counter(map(str,res)).most_common(5))
    print("after: rss_kb", rss(), "fds", fds(), "health", health())
asyncio.run(main())
