"""Feedback ingest: POST /v1/feedback (durable commit before each 2xx) vs raw Redis XADD.

Run: .venv/bin/python -m benchmarks.feedback_ingest [--seconds 10] [--concurrency 16 32 64]
        [--groups 2000] [--keys 50] [--database-url postgresql+psycopg://...] [--json out.json]

Needs the test Redis (``tools/test-services.sh up``). The feedback service runs as a child
process (``python -m services.feedback``) on free loopback ports, with SQLite in a temp folder
(WAL, ``synchronous=FULL``, group commit) or, with ``--database-url``, a fresh PostgreSQL
database created on that server and dropped afterwards. Its Redis is ``--redis-url`` (database
7 by default), flushed first.

Set-up, not timed: ``--groups`` candidate groups of 4 answers, served to ``--keys`` API keys,
are recorded over gRPC (RecordInteraction), as the gateway does.

Load: ONE generator process (uvloop, ``--concurrency`` HTTP/1.1 keep-alive connections, each
with one request in flight: a closed loop). Requests are pre-serialised bytes written straight
to the socket; the client parses only the status line and the Content-Length body. The mix is
70% thumbs, 20% pairwise votes, 10% full rankings (sometimes with a tie), on random answers of
random groups, each with a unique ``client_event_id`` and the API key that received the
answers. A later vote by the same key on the same answer(s) replaces the earlier one; that is
still a 201 and a stored event. Latency is send -> full response. Only 2xx count as events.
Each level runs a ``--warmup`` (not counted), then ``--seconds`` timed.

Ceiling: the same generator, the same concurrency, the same request bodies, written with raw
``XADD <stream> * kind <kind> body <json>`` over as many raw RESP connections (no fsync, no
validation, no database): what the client and the loopback can do at best on this machine.

Checks after the service runs: the 2xx count equals the stored feedback events (gRPC Stats),
and once the outbox has drained, the Redis stream holds exactly as many entries.

Prints, per concurrency, events/s and p50/p90/p99/max for both sides, the CPU each process
used (2 cores in all on the development box), the ratio service / XADD, and PASS/FAIL against
the target: >= 1,500 events/s with p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
import uvloop

from services.common.generated.flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from services.common.redis_names import FEEDBACK_EVENTS_STREAM
from tests.feedback.feedback_helpers import ServedGroup, ServiceProcess, serve_group

TARGET_RATE = 1500.0
TARGET_P99_S = 0.100
CANDIDATES = 4
MIX = (("thumb", 0.7), ("pairwise", 0.2), ("ranking", 0.1))
DECK_SIZE = 20_000  # pre-built bodies, cycled; each send gets a fresh client_event_id
SEQ_WIDTH = 12  # fixed width, so Content-Length is known when the deck is built
XADD_STREAM = "bench:feedback-ingest:xadd"


# ---- the requests ---------------------------------------------------------------------------


def random_body(rng: random.Random, group: ServedGroup) -> dict:
    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
    ids = group.response_ids
    if kind == "thumb":
        return {"kind": "thumb", "response_id": rng.choice(ids), "value": rng.choice((1, -1))}
    if kind == "pairwise":
        a, b = rng.sample(ids, 2)
        outcome = rng.choices(("a", "b", "tie", "both_bad"), (4, 4, 1, 1))[0]
        return {"kind": "pairwise", "response_a": a, "response_b": b, "outcome": outcome}
    order = rng.sample(ids, len(ids))
    tiers = [[r] for r in order]
    if rng.random() < 0.2:  # a tie between the last two
        tiers[-2:] = [tiers[-2] + tiers[-1]]
    return {"kind": "ranking", "ranking": tiers}


@dataclass
class Deck:
    """Pre-serialised requests; a request is ``head + seq + tail`` (seq: fixed-width digits)."""

    http_heads: list[bytes] = field(default_factory=list)  # headers + body up to the seq
    resp_heads: list[bytes] = field(default_factory=list)  # XADD command up to the seq
    tail: bytes = b'"}'
    seq: int = 0
    ok_total: int = 0  # successful sends, warm-ups included (for the consistency check)

    def next_seq(self) -> bytes:
        self.seq += 1
        return b"%0*d" % (SEQ_WIDTH, self.seq)


def build_deck(groups: list[ServedGroup], port: int, seed: int) -> Deck:
    rng = random.Random(seed)
    deck = Deck()
    key = XADD_STREAM.encode()
    for _ in range(DECK_SIZE):
        group = rng.choice(groups)
        body = random_body(rng, group)
        # client_event_id last, so the unique part goes at the very end of the body.
        text = json.dumps(body, separators=(",", ":"))[:-1] + ',"client_event_id":"ev-'
        prefix = text.encode()
        length = len(prefix) + SEQ_WIDTH + len(deck.tail)
        deck.http_heads.append(
            b"POST /v1/feedback HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, group.api_key.encode(), length, prefix)
        )
        kind = body["kind"].encode()
        deck.resp_heads.append(
            b"*7\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$4\r\nkind\r\n$%d\r\n%s\r\n"
            b"$4\r\nbody\r\n$%d\r\n%s" % (len(key), key, len(kind), kind, length, prefix)
        )
    return deck


# ---- the load generator ---------------------------------------------------------------------


@dataclass
class PhaseResult:
    seconds: float
    latencies: list[float]  # of the 2xx (service) or OK replies (XADD)
    statuses: Counter
    generator_cpu_s: float
    cpu_s: dict[str, float]
    writer: dict[str, float] = field(default_factory=dict)  # service only, from /metrics
    per_second: list[int] = field(default_factory=list)  # events completed in each second

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict:
        return {
            "events": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "p50_ms": round(self.pct(0.50) * 1000, 2),
            "p90_ms": round(self.pct(0.90) * 1000, 2),
            "p99_ms": round(self.pct(0.99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=float("nan")) * 1000, 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else 0,
            "cpu_percent_of_one_core": {
                "generator": round(100 * self.generator_cpu_s / self.seconds),
                **{k: round(100 * v / self.seconds) for k, v in self.cpu_s.items()},
            },
            **({"writer": self.writer} if self.writer else {}),
            "events_each_second": self.per_second,
        }


_WRITER_METRICS = (
    "flywheel_feedback_write_batch_size_sum",
    "flywheel_feedback_write_batch_size_count",
    "flywheel_feedback_commit_duration_seconds_sum",
)


def writer_counters(port: int) -> dict[str, float]:
    """The writer's group-commit counters from the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _WRITER_METRICS:
            values[name] = float(value)
    return values


def writer_summary(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """Mean batch size, mean batch time (run + commit) and how busy the writer thread was."""
    requests, batches, busy = (after[m] - before[m] for m in _WRITER_METRICS)
    if not batches:
        return {}
    return {
        "batches_per_s": round(batches / seconds, 1),
        "mean_batch_size": round(requests / batches, 1),
        "mean_batch_ms": round(1000 * busy / batches, 2),
        "writer_busy_percent": round(100 * busy / seconds),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _http_request(reader, writer, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError(f"no Content-Length in the response: {head[:200]!r}")
    length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
    if length:
        await reader.readexactly(length)
    return status


async def _xadd(reader, writer, command: bytes) -> int:
    writer.write(command)
    line = await reader.readline()
    if line[:1] == b"$":
        await reader.readexactly(int(line[1:-2]) + 2)
        return 200
    if line[:1] == b"-":
        return 500
    raise RuntimeError(f"unexpected Redis reply {line!r}")


class Generator:
    """C connections (HTTP to the service, or RESP to Redis), each one request in flight."""

    def __init__(self, deck: Deck, mode: str, host: str, port: int, db: int | None = None):
        self.deck, self.mode, self.host, self.port, self.db = deck, mode, host, port, db
        self.heads = deck.http_heads if mode == "http" else deck.resp_heads
        self.tail = deck.tail if mode == "http" else deck.tail + b"\r\n"  # RESP ends a bulk
        self.send = _http_request if mode == "http" else _xadd
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.cursor = 0

    async def connect(self, n: int) -> None:
        for _ in range(n):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            if self.mode == "resp" and self.db is not None:
                writer.write(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%d\r\n" % (len(str(self.db)), self.db))
                if (await reader.readline()) != b"+OK\r\n":
                    raise RuntimeError("SELECT failed")
            self.conns.append((reader, writer))

    async def close(self) -> None:
        for _, writer in self.conns:
            writer.close()
        self.conns.clear()

    def next_request(self) -> bytes:
        head = self.heads[self.cursor % len(self.heads)]
        self.cursor += 1
        return b"".join((head, self.deck.next_seq(), self.tail))

    async def phase(self, seconds: float, pids: dict[str, int]) -> PhaseResult:
        latencies: list[float] = []
        statuses: Counter = Counter()
        clock = time.perf_counter

        async def worker(reader, writer) -> None:
            while clock() < deadline:
                request = self.next_request()
                sent = clock()
                try:
                    status = await self.send(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, RuntimeError) as error:
                    statuses[type(error).__name__] += 1
                    return
                if 200 <= status < 300:
                    done = clock()
                    latencies.append(done - sent)
                    per_second[min(int(done - started), len(per_second) - 1)] += 1
                statuses[status] += 1

        probe = writer_counters(self.port) if self.mode == "http" else None
        cpu_before = {name: process_cpu_s(pid) for name, pid in pids.items()}
        own_before = time.process_time()
        per_second = [0] * (int(seconds) + 2)
        started = clock()
        deadline = started + seconds
        # A reply that never comes fails the run instead of hanging it.
        await asyncio.wait_for(asyncio.gather(*(worker(r, w) for r, w in self.conns)), seconds + 60)
        elapsed = clock() - started
        own = time.process_time() - own_before
        cpu = {name: process_cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        writer = writer_summary(probe, writer_counters(self.port), elapsed) if probe else {}
        return PhaseResult(elapsed, latencies, statuses, own, cpu, writer, per_second)


async def run_levels(
    deck: Deck, mode: str, port: int, levels: list[int], args, pids: dict[str, int], db=None
) -> dict[int, PhaseResult]:
    results = {}
    for concurrency in levels:
        generator = Generator(deck, mode, "127.0.0.1", port, db)
        await generator.connect(concurrency)
        try:
            warm = await generator.phase(args.warmup, pids)
            if warm.errors:
                print(f"  warm-up: {warm.errors} errors {dict(warm.statuses)}")
            result = await generator.phase(args.seconds, pids)
        finally:
            await generator.close()
        results[concurrency] = result
        s = result.summary()
        label = "service" if mode == "http" else "XADD"
        print(
            f"  {label:>7} C={concurrency:<3} {s['events_per_s']:>8.0f} events/s  "
            f"p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  errors {s['errors']}  "
            f"CPU% {s['cpu_percent_of_one_core']}"
            + (f"  writer {s['writer']}" if "writer" in s else ""),
            flush=True,
        )
        deck.ok_total += warm.ok + result.ok
    return results


# ---- set-up and checks ----------------------------------------------------------------------


def record_groups(stub, n_groups: int, n_keys: int) -> list[ServedGroup]:
    keys = [f"fwk_bench_{uuid.uuid4().hex}" for _ in range(n_keys)]
    with ThreadPoolExecutor(32) as pool:
        futures = [
            pool.submit(serve_group, stub, api_key=keys[i % n_keys], n=CANDIDATES)
            for i in range(n_groups)
        ]
        return [f.result() for f in futures]


def stored_events(stub) -> tuple[int, int]:
    stats = stub.Stats(feedback_pb2.StatsRequest(), timeout=30)
    counts = stats.feedback_events
    return counts.ranking + counts.thumbs + counts.pairwise, stats.outbox_backlog


def wait_for_outbox(stub, timeout: float = 120.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        total, backlog = stored_events(stub)
        if backlog == 0 or time.monotonic() > deadline:
            return total, backlog
        time.sleep(0.2)


class PostgresDatabase:
    """A fresh database on the server of ``url``, dropped on exit."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.server = sa.make_url(url)
        self.name = f"fb_bench_{uuid.uuid4().hex[:12]}"
        self.url = self.server.set(database=self.name).render_as_string(hide_password=False)

    def _admin(self):
        import psycopg

        libpq = self.server.set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.connect(libpq, autocommit=True)

    def __enter__(self) -> str:
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc) -> None:
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# ---- report ---------------------------------------------------------------------------------


def passes(result: PhaseResult) -> bool:
    return result.rate >= TARGET_RATE and result.pct(0.99) < TARGET_P99_S


def print_table(service: dict[int, PhaseResult], xadd: dict[int, PhaseResult], store: str):
    print()
    print(
        f"| concurrency | {store}: events/s | p50 / p90 / p99 / max (ms) | errors "
        "| XADD: events/s | XADD p50 / p99 (ms) | ratio | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c, s in service.items():
        x = xadd[c]
        print(
            f"| {c} | {s.rate:,.0f} | {s.pct(0.5) * 1e3:.1f} / {s.pct(0.9) * 1e3:.1f} / "
            f"{s.pct(0.99) * 1e3:.1f} / {max(s.latencies, default=0) * 1e3:.1f} | {s.errors} "
            f"| {x.rate:,.0f} | {x.pct(0.5) * 1e3:.2f} / {x.pct(0.99) * 1e3:.2f} "
            f"| {s.rate / x.rate:.3f} | {'PASS' if passes(s) else 'FAIL'} |"
        )
    print()
    for c, s in service.items():
        x = xadd[c]
        print(
            f"C={c}: ratio service / XADD: {s.rate / x.rate:.3f} "
            f"({s.rate:,.0f} vs {x.rate:,.0f} events/s); "
            f"target >= {TARGET_RATE:,.0f} events/s at p99 < {TARGET_P99_S * 1e3:.0f} ms: "
            f"{'PASS' if passes(s) else 'FAIL'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed run per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed run before each")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[32], help="requests in flight (levels)"
    )
    parser.add_argument("--groups", type=int, default=2000, help="candidate groups of 4 answers")
    parser.add_argument("--keys", type=int, default=50, help="API keys the groups are served to")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6399/7", help="flushed first")
    parser.add_argument("--database-url", help="PostgreSQL server (a fresh database is made)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--pause", action="store_true", help="print the service pid and wait for Enter (profiling)"
    )
    args = parser.parse_args()

    redis_client = redis.Redis.from_url(args.redis_url)
    redis_client.flushdb()
    redis_info = redis_client.info("server")
    redis_pid = int(redis_info["process_id"])
    redis_port = int(redis_info["tcp_port"])
    redis_db = redis_client.connection_pool.connection_kwargs.get("db", 0)

    with tempfile.TemporaryDirectory(prefix="feedback-ingest-") as tmp:
        if args.database_url:
            database = PostgresDatabase(args.database_url)
            database_url = database.__enter__()
            store = "PostgreSQL"
        else:
            database, database_url, store = None, None, "SQLite"
        service = ServiceProcess(Path(tmp), args.redis_url, database_url)
        try:
            service.start()
            channel = service.channel()
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            started = time.perf_counter()
            groups = record_groups(stub, args.groups, args.keys)
            print(
                f"set-up: {len(groups)} groups x {CANDIDATES} answers, {args.keys} keys, "
                f"recorded over gRPC in {time.perf_counter() - started:.1f} s ({store}); "
                f"service pid {service.process.pid}",
                flush=True,
            )
            deck = build_deck(groups, service.http_port, args.seed)
            pids = {"service": service.process.pid, "redis": redis_pid}
            if args.pause:
                input(f"service pid {service.process.pid}; Enter to start the load ")
            service_results = uvloop.run(
                run_levels(deck, "http", service.http_port, args.concurrency, args, pids)
            )
            acknowledged = deck.ok_total
            stored, backlog_after_run = stored_events(stub)
            drain_started = time.perf_counter()
            stored, backlog = wait_for_outbox(stub)
            drain_s = time.perf_counter() - drain_started
            stream_length = redis_client.xlen(FEEDBACK_EVENTS_STREAM)
            channel.close()
        finally:
            service.stop()
            if database is not None:
                database.__exit__(None, None, None)

    deck.ok_total = 0
    xadd_results = uvloop.run(
        run_levels(deck, "resp", redis_port, args.concurrency, args, {"redis": redis_pid}, redis_db)
    )
    redis_client.flushdb()

    print_table(service_results, xadd_results, store)
    consistent = acknowledged == stored == stream_length and backlog == 0
    print(
        f"consistency: {acknowledged} acknowledged (2xx, warm-ups included), {stored} stored "
        f"events (gRPC Stats), {stream_length} on the stream after the outbox drained "
        f"({backlog_after_run} in the outbox when the load stopped, drained in {drain_s:.1f} s): "
        f"{'OK' if consistent else 'MISMATCH'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "store": store,
                    "cpu_count": os.cpu_count(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "service": {c: r.summary() for c, r in service_results.items()},
                    "xadd": {c: r.summary() for c, r in xadd_results.items()},
                    "consistency": {
                        "acknowledged": acknowledged,
                        "stored": stored,
                        "stream_length": stream_length,
                        "backlog_at_stop": backlog_after_run,
                        "drain_s": round(drain_s, 2),
                        "ok": consistent,
                    },
                },
                indent=2,
            )
        )
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
