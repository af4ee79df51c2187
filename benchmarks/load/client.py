"""HTTP load generators for lean serve: closed-loop at a fixed concurrency, and open-loop on a schedule.

Open loop: request i is due at a time fixed before the run starts (Poisson arrivals at the target
rate), and its latency is measured from that due time, not from when the client got round to
sending it, so a server that stalls is charged for every request it delayed (no coordinated
omission). Closed loop: C users each send their next request when the last one is answered; that is
what "throughput at concurrency C" means, and its latencies are the service times at C.

Both talk to 127.0.0.1 only and stop by themselves after a fixed time and a fixed number of requests.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What a phase measured: latencies (s) of 200s, counts by status, wall time, requests sent."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    late_start_s: float = 0.0  # open loop: how far behind its schedule the client fell at worst

    def summary(self) -> dict:
        ok = len(self.latencies)
        out = {"seconds": round(self.seconds, 3), "requests": sum(self.statuses.values()), "ok": ok,
               "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
               "throughput_rps": round(ok / self.seconds, 2) if self.seconds else 0.0,
               "errors_5xx": sum(v for k, v in self.statuses.items() if isinstance(k, int) and k >= 500),
               "client_errors": sum(v for k, v in self.statuses.items() if not isinstance(k, int))}
        for q in (50, 90, 99):
            out[f"p{q}_ms"] = round(percentile(self.latencies, q) * 1000, 2) if ok else None
        if self.late_start_s:
            out["client_late_start_ms"] = round(self.late_start_s * 1000, 2)
        return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def _send(session, url: str, text: str) -> int | str:
    try:
        async with session.post(url, data=json.dumps({"texts": [text]}),
                                headers={"content-type": "application/json"}) as r:
            await r.read()
            return r.status
    except Exception as e:  # a refused or reset connection: counted by type, never a crash of the client
        return type(e).__name__


def _session(connections: int, timeout_s: float):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(url: str, texts: list[str], concurrency: int, seconds: float, warmup_s: float = 2.0,
                      max_requests: int = 200_000) -> Outcome:
    """`concurrency` users back to back for warmup_s (not counted) then `seconds`: the answers that
    complete inside that window give the throughput and the latencies."""
    out = Outcome()
    start = time.perf_counter()
    counted_from, end = start + warmup_s, start + warmup_s + seconds
    sent = 0
    async with _session(concurrency, 60) as session:
        async def user(u: int):
            nonlocal sent
            i = u
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                status = await _send(session, url, texts[i % len(texts)])
                t1 = time.perf_counter()
                i += concurrency
                if counted_from <= t1 <= end:  # answers completed inside the window, however long they took
                    out.statuses[status] += 1
                    if status == 200:
                        out.latencies.append(t1 - t0)

        await asyncio.gather(*[user(u) for u in range(concurrency)])
    out.seconds = seconds
    return out


async def open_loop(url: str, texts: list[str], rate: float, seconds: float, seed: int = 0,
                    connections: int = 4096, on_tick=None) -> Outcome:
    """Poisson arrivals at `rate` per second for `seconds`; latency from each request's due time.

    `on_tick(elapsed_s)` is called about once a second (the soak samples memory there). Connections
    are not pooled tightly: a request waiting for a free connection would hide the overload from the server.
    """
    rng = random.Random(seed)
    due, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        due.append(t)
    out = Outcome()
    async with _session(connections, 60) as session:
        start = time.perf_counter()
        tasks, next_tick = [], 1.0

        async def one(i: int, at: float):
            status = await _send(session, url, texts[i % len(texts)])
            out.statuses[status] += 1
            if status == 200:
                out.latencies.append(time.perf_counter() - at)

        for i, offset in enumerate(due):
            at = start + offset
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                out.late_start_s = max(out.late_start_s, -delay)
            tasks.append(asyncio.ensure_future(one(i, at)))
            if on_tick is not None and offset >= next_tick:
                on_tick(offset)
                next_tick += 1.0
        await asyncio.gather(*tasks)
        out.seconds = seconds
    return out
