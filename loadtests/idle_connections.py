"""Holds N keep-alive connections open to a gateway, each after one request, and reports the
gateway's RSS before and after (from /proc/PID/status): the memory an idle connection costs.
Used by loadtests/connections.sh; run it there, not on its own.

    python3 loadtests/idle_connections.py N PORT PID
"""
import asyncio, sys, os, time
N = int(sys.argv[1]); PORT = int(sys.argv[2]); PID = int(sys.argv[3])
def rss_kb():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await w.drain()
    data = b""

    async def more():
        chunk = await r.read(4096)
        if not chunk:
            raise ConnectionError(f"connection {i}: the gateway closed it")
        return chunk

    while b"\r\n\r\n" not in data:
        data += await more()
    head, _, rest = data.partition(b"\r\n\r\n")
    lengths = [l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
    if lengths:
        while len(rest) < int(lengths[0]):
            rest += await more()
    else:
        while not rest.endswith(b"0\r\n\r\n"):
            rest += await more()
    conns.append((r, w))
async def main():
    before = rss_kb()
    conns = []
    sem = asyncio.Semaphore(200)
    async def guarded(i):
        async with sem:
            await one(i, conns)
    await asyncio.gather(*(guarded(i) for i in range(N)))
    await asyncio.sleep(2)
    after = rss_kb()
    # Still open? Send one more request on the last connection.
    r, w = conns[-1]
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); await w.drain()
    line = await r.readline()
    print(f"connections={len(conns)} rss_before_kb={before} rss_after_kb={after} per_connection_bytes={(after-before)*1024/len(conns):.0f} last_answer={line.decode().strip()}")
    for _, w in conns: w.close()
asyncio.run(main())
