"""The load harness without a broker: latency from offsets and send times, the report files, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from aiokafka import TopicPartition

from load.latency import LatencySample, LatencyTracker, percentiles
from load.producing import PacedProducer
from load.report import write_report
from load.timeline import Point, series
from stream.engine.native import native_available

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_latency_is_commit_time_minus_send_time_per_record():
    tr = LatencyTracker()
    tr.sent(0, 0, 100, send_time=1.0)  # records 0..99 of p0 at t=1.0
    tr.sent(0, 100, 50, send_time=1.5)  # 100..149 at t=1.5
    tr.sent(1, 0, 10, send_time=1.2)
    tr.committed(0, 60, t=2.0)  # 60 of the first batch
    tr.committed(0, 60, t=2.5)  # no progress: nothing new
    tr.committed(0, 120, t=3.0)  # the other 40 of batch 1 and 20 of batch 2
    tr.committed(1, 10, t=1.7)
    got = sorted((s.latency, s.records) for s in tr.samples)
    assert got == [(pytest.approx(0.5), 10), (pytest.approx(1.0), 60), (pytest.approx(1.5), 20),
                   (pytest.approx(2.0), 40)]
    assert tr.measured_records() == 130
    assert tr.pending_records() == 30  # 120..149 of p0 not committed yet


def test_a_batch_acked_after_its_commit_was_seen_gets_the_first_covering_poll():
    tr = LatencyTracker()
    tr.committed(0, 50, t=2.0)
    tr.committed(0, 200, t=3.0)
    tr.sent(0, 40, 100, send_time=1.0)  # 40..49 covered at t=2, 50..139 at t=3
    assert sorted((s.committed_at, s.records) for s in tr.samples) == [(2.0, 10), (3.0, 90)]
    assert tr.pending_records() == 0


def test_percentiles_are_weighted_by_records():
    samples = [LatencySample(1, 0.1, 98), LatencySample(1, 1.0, 1), LatencySample(1, 5.0, 1)]
    p = percentiles(samples)
    assert p["p50"] == 0.1 and p["p90"] == 0.1 and p["p99"] == 1.0 and p["max"] == 5.0
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_series_rates_and_latency_per_second():
    points = [Point(t / 10, produced=t * 100, committed=max(0, t - 5) * 100, end=t * 100, lag=5) for t in range(31)]
    samples = [LatencySample(0.5, 0.2, 100), LatencySample(1.5, 0.4, 100), LatencySample(2.5, 0.8, 100)]
    s = series(points, samples)
    assert s["t"] == [1.0, 2.0, 3.0]
    assert s["produced_per_s"] == [pytest.approx(1000.0)] * 3
    assert s["committed_per_s"][1:] == [pytest.approx(1000.0)] * 2
    assert s["latency_p99"] == [0.2, 0.4, 0.8]


def test_report_writes_json_markdown_and_valid_pngs(tmp_path):
    points = [Point(t / 10, t * 100, t * 90, t * 100, 10) for t in range(25)]
    samples = [LatencySample(t / 10, 0.1 + t / 100, 100) for t in range(25)]
    report = {"config": {"rate": 1000, "duration_s": 2.5, "topic": "gifts", "partitions": 2, "group": "g",
                         "bootstrap": "b", "poll_interval_s": 0.1},
              "results": {"produced": 2500, "latency_s": {**percentiles(samples), "records": 2500}},
              "verification": {"passed": True, "checks": [{"name": "x", "passed": True, "detail": "d"}]},
              "series": series(points, samples)}
    paths = write_report(tmp_path / "r", report)
    assert json.loads(paths["json"].read_text())["results"]["produced"] == 2500
    md = paths["markdown"].read_text()
    assert "Verification: PASSED" in md and "![latency](latency.png)" in md and "| latency p99 |" in md
    for name in ("rate", "lag", "latency"):
        data = paths[name].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert b"IHDR" in data[:32] and data.rstrip().endswith(b"IEND\xaeB`\x82")


class _FakeBatch:
    def __init__(self) -> None:
        self.n = 0

    def append(self, key, value, timestamp):
        if self.n == 3:
            return None  # full after 3 records
        self.n += 1
        return object()


def _acked(base_offset: int) -> asyncio.Future:
    """A send_batch future already resolved with the batch's record metadata (its base offset)."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(type("Md", (), {"offset": base_offset})())
    return fut


class _FakeProducer:
    def __init__(self) -> None:
        self.next = {}
        self.sent: list[tuple[int, int]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic):
        return {0, 1, 2}

    def create_batch(self):
        return _FakeBatch()

    async def send_batch(self, batch, topic, partition):
        base = self.next.get(partition, 0)
        self.next[partition] = base + batch.n
        self.sent.append((partition, batch.n))
        return _acked(base)


async def test_paced_producer_keys_by_creator_and_reports_every_batch():
    from stream.kafka.routing import partition_for

    records = [json.dumps({"creator_id": f"c{i % 5}", "ts": i}).encode() for i in range(40)] + [b"junk"]
    prod = _FakeProducer()
    seen: list[tuple[int, int, int]] = []
    pp = PacedProducer(prod, "t", 4, rate=None, on_batch=lambda p, base, n, t: seen.append((p, base, n)))
    assert await pp.run(pp.shipments(pp.address(records))) == 41
    await asyncio.sleep(0)
    assert sum(n for _, _, n in seen) == 41
    per_p: dict[int, int] = {}
    for i in range(40):
        p = partition_for(f"c{i % 5}".encode(), 4)
        per_p[p] = per_p.get(p, 0) + 1
    per_p[0] = per_p.get(0, 0) + 1  # the keyless record
    got: dict[int, int] = {}
    for p, base, n in seen:
        assert base == got.get(p, 0)  # contiguous offset ranges per partition
        got[p] = base + n
    assert got == per_p


async def test_paced_producer_holds_the_rate():
    prod = _FakeProducer()
    pp = PacedProducer(prod, "t", 2, rate=2_000)
    records = (json.dumps({"creator_id": f"c{i}", "ts": i}).encode() for i in range(100_000))
    sent = await pp.run(pp.shipments(pp.address(records)), duration=0.5)
    assert 700 <= sent <= 1_100


async def test_the_ordered_producer_shows_a_partitions_topics_in_order_and_grows_its_batches_while_it_waits():
    """Each ack comes 40 ms after its send. A partition's first batch of another topic is sent only once the
    batches before it are acked (visible: on a cluster, once replicated), while the other partitions go on; the
    records queued meanwhile go out in one batch, so the rate holds."""
    from load.producing import OrderedProducer

    loop = asyncio.get_running_loop()
    sends: list[tuple[float, int, str, int]] = []  # (sent at, partition, topic, records)
    acks: dict[int, float] = {}  # index in sends -> acked at

    class Roomy(_FakeBatch):
        def append(self, key, value, timestamp):
            self.n += 1
            return object()

    class SlowAcks(_FakeProducer):
        def create_batch(self):
            return Roomy()

        async def send_batch(self, batch, topic, partition):
            i = len(sends)
            sends.append((loop.time(), partition, topic, batch.n))
            base = self.next.get((topic, partition), 0)
            self.next[(topic, partition)] = base + batch.n
            fut = loop.create_future()

            def ack() -> None:
                acks[i] = loop.time()
                fut.set_result(type("Md", (), {"offset": base})())

            loop.call_later(0.04, ack)
            return fut

    def routed(i: int) -> tuple:  # every 500th record a payout, partitions 0 and 1 alternating
        topic = "payouts" if i % 500 == 499 else "gifts"
        return topic, b"k", i % 2, b"v%d" % i, None

    seen: list[tuple[int, int, int]] = []
    pp = OrderedProducer(SlowAcks(), "gifts", 2, rate=5_000, on_batch=lambda p, base, n, t: seen.append((p, base, n)))
    sent = await pp.run(pp.shipments(routed(i) for i in range(100_000)), duration=0.5)
    assert 2_000 <= sent <= 2_600 and pp.failed == 0  # 5,000/s for 0.5 s, payouts not counted
    for p in (0, 1):
        mine = [(i, s) for i, s in enumerate(sends) if s[1] == p]
        for (i, a), (_, b) in itertools.pairwise(mine):
            if a[2] != b[2]:
                assert b[0] >= acks[i], f"partition {p}: a {b[2]} batch sent before the {a[2]} one was acked"
    assert max(s[3] for s in sends if s[2] == "gifts") > 60  # records queued behind an ack went out together
    per_p = {p: sum(n for q, _, n in seen if q == p) for p in (0, 1)}
    assert sum(per_p.values()) == sent  # every gift acked, counted once


class _BuildingProducer(_FakeProducer):
    """Builds each batch like aiokafka's sender does and keeps the records it would have sent."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, list[tuple[bytes, bytes, int]]] = {}

    async def send_batch(self, batch, topic, partition):
        from aiokafka.record.default_records import DefaultRecordBatch

        batch._set_producer_state(1, 0, len(self.records.get(partition, ())))
        built = DefaultRecordBatch(batch._build())
        assert built.validate_crc()
        got = [(r.key, r.value, r.timestamp) for r in built]
        base = len(self.records.setdefault(partition, []))
        self.records[partition].extend(got)
        return _acked(base)


@pytest.mark.skipif(not native_available(), reason="native engine not built")
async def test_batches_packed_ahead_carry_every_record_in_order_stamped_when_sent():
    from stream.kafka.routing import partition_for

    records = [json.dumps({"creator_id": f"c{i % 7}", "ts": i}).encode() for i in range(3_000)]
    prod = _BuildingProducer()
    seen: list[tuple[int, int, int]] = []
    pp = PacedProducer(prod, "t", 3, rate=20_000, native_batches=True, max_batch_bytes=4_000,
                       on_batch=lambda p, base, n, t: seen.append((p, base, n)))
    shipments = list(pp.shipments(pp.address(records)))  # packed before the clock starts
    assert len(shipments) == 15  # 200 records a tick (20,000/s, 10 ms)
    await asyncio.sleep(0.02)
    before = int(time.time() * 1000)
    assert await pp.run(shipments) == 3_000
    await asyncio.sleep(0)
    want: dict[int, list[bytes]] = {}
    for raw in records:
        key = json.loads(raw)["creator_id"].encode()
        want.setdefault(partition_for(key, 3), []).append(raw)
    assert {p: [v for _, v, _ in got] for p, got in prod.records.items()} == want
    stamps = [ts for got in prod.records.values() for _, _, ts in got]
    assert min(stamps) >= before  # stamped when handed over, not when packed
    assert sum(n for _, _, n in seen) == 3_000 and max(n for _, _, n in seen) < 200  # 4,000-byte batches


class _FakeGroup:
    """The consumer (end offsets) and admin client (committed offsets) of a load run over a _FakeProducer's
    topic: the group commits, at each poll, what was in the topic at the previous one."""

    def __init__(self, prod: _FakeProducer) -> None:
        self.prod = prod
        self.seen: dict[int, int] = {}
        self.lookups = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def end_offsets(self, tps):
        return {tp: self.prod.next.get(tp.partition, 0) for tp in tps}

    async def find_coordinator(self, group_id):
        self.lookups += 1
        return 0  # node 0: a valid coordinator, looked up once

    async def _send_request(self, request, node):  # the admin client's, for the run's OffsetFetch
        topics = request._partitions
        tps = [(topic, p) for topic, ps in topics for p in ps]
        committed, self.seen = self.seen, {p: self.prod.next.get(p, 0) for _, p in tps}
        return SimpleNamespace(error_code=0, topics=[(topic, [(p, committed.get(p, -1), "", 0) for p in ps])
                                                     for topic, ps in topics])


async def test_load_run_measures_and_reports_without_a_broker(tmp_path, policy):
    from load.generator import TrafficConfig, generate
    from load.run import LoadRun, RunOptions
    from stream.config import WorkerConfig

    prod = _FakeProducer()
    group = _FakeGroup(prod)

    class Run(LoadRun):
        async def _open(self) -> None:
            self.producer, self.consumer, self.admin = prod, group, group

    opts = RunOptions(rate=20_000, duration=5, out=tmp_path / "r", generate_live=True, verify=False, quiet=True,
                      extra={"traffic": {"seed": 3}})
    records = generate(TrafficConfig(seed=3, events=4_000, creators=20, senders=500, rate_per_s=20_000.0))
    report = await Run(WorkerConfig(group_id="g"), policy, records, opts).run()
    assert list(report) == ["config", "results", "verification", "series", "files"]
    assert list(report["config"]) == ["rate", "duration_s", "topic", "partitions", "group", "bootstrap",
                                      "poll_interval_s", "warmup_s", "traffic_generation", "policy_version",
                                      "traffic"]
    r = report["results"]
    assert list(r) == ["produced", "produce_seconds", "produce_rate", "committed", "throughput", "peak_throughput",
                       "max_lag", "final_lag", "drained", "drain_s", "latency_s", "latency_after_warmup_s",
                       "poll_period_s", "poll_failures", "send_failures"]
    assert r["produced"] == r["committed"] == r["latency_s"]["records"] == 4_000
    assert r["poll_failures"] == r["send_failures"] == 0
    assert r["drained"] and r["final_lag"] == 0 and 0 < r["latency_s"]["p50"] <= r["latency_s"]["max"] < 1
    assert report["config"]["partitions"] == 3 and report["config"]["traffic_generation"] == "live, while producing"
    assert report["verification"] == {"passed": None, "checks": [], "reason": "skipped (--no-verify)"}
    assert group.lookups == 1
    assert json.loads(Path(report["files"]["json"]).read_text())["results"] == r


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", "load", *args], cwd=ROOT, capture_output=True,
                          timeout=60)


def test_generate_to_file_is_deterministic_and_reports_stats(tmp_path):
    a, b, c = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"
    flags = ["--events", "3000", "--seed", "7", "--creators", "20", "--senders", "500", "--duplicate-rate", "0.02",
             "--late-rate", "0.01", "--malformed-rate", "0.01", "--missing-end-rate", "0.05",
             "--burst-multiplier", "10", "--burst-start", "0.5", "--burst-duration", "0.1", "--quiet"]
    for path in (a, b, c):
        r = _cli("generate", *flags, "--out", str(path))
        assert r.returncode == 0, r.stderr
        stats = json.loads(r.stdout)
        assert stats["records"] == 3000 and stats["duplicates"] > 0 and stats["malformed_total"] > 0
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()) == c.read_bytes()
    assert len(c.read_bytes().splitlines()) == 3000
    other = tmp_path / "d.jsonl"
    assert _cli("generate", *flags[:3], "8", *flags[4:], "--out", str(other)).returncode == 0
    assert other.read_bytes() != c.read_bytes()  # another seed, other traffic


def test_generate_needs_a_destination():
    r = _cli("generate", "--events", "10", "--quiet")
    assert r.returncode == 2 and b"--out" in r.stderr


def test_load_commands_are_in_the_cli_help():
    r = _cli("--help")
    assert r.returncode == 0 and b"generate" in r.stdout and b"run" in r.stdout and b"compare" in r.stdout
    r = _cli("run", "--help")
    assert b"--rate" in r.stdout and b"--duration" in r.stdout and b"--out" in r.stdout and b"--accounts" in r.stdout


# ------------------------------------------------------------------ the ground truth against the reference engine

def _account(creator: str, region: str, status: str = "standard", method: str = "paypal", age: int = 30,
             ts: int = 0) -> bytes:
    return json.dumps({"creator_id": creator, "region": region, "account_status": status, "payout_method": method,
                       "age": age, "updated_ts": ts}).encode()


def _cross_check(policy, gifts, payouts=(), accounts=(), partitions: int = 1, batch_size: int = 20_000):
    """The replay (the reference engine, to end of session) and the independent ground truth of one session: gift and
    payout records, accounts (key, value, Kafka timestamp: a tombstone's time). Their balances must be equal;
    returns both. (The merge orders every other record by the time it holds.)"""
    from load.ground_truth import expected_inputs, route
    from load.verify import truth_rules
    from stream.runtime.replay import AccountRecord, Session, replay

    gifts, payouts, accounts = list(gifts), list(payouts), list(accounts)
    session = Session(gifts, payouts, [AccountRecord(k, v, t) for k, v, t in accounts])
    result = replay(session, policy, partitions=partitions, batch_size=batch_size, final=True, engine="python")
    truth = expected_inputs(route(partitions, [(g, 0) for g in gifts], [(q, 0) for q in payouts], accounts), partitions,
                            truth_rules(policy))
    got = {c: s.balance for e in result.engines.values() for c, s in e.state.creators.items()}
    assert got == truth["balances"]
    assert result.summary["payouts"] == truth["payouts"] and not truth["payouts_undecided"]
    assert {c: (a.region, a.account_status) for e in result.engines.values()
            for c, a in e.state.accounts.items()} == truth["accounts"]
    refused = {"payouts": 0, "creator-accounts": 0}
    for d in result.outputs.dead_letters:
        if d.source_topic in refused:
            refused[d.source_topic] += 1
    assert refused == {"payouts": truth["payouts_refused"], "creator-accounts": truth["accounts_refused"]}
    return result, truth


@pytest.mark.parametrize("batch_size", [20_000, 97])
def test_ground_truth_with_accounts_and_payouts_agrees_with_the_replay(policy, batch_size):
    """A generated run with accounts and payouts (tombstones stamped with their time on the run's clock, as `load run`
    stamps them at send): the ground truth and the reference engine agree exactly."""
    from load.generator import TrafficConfig, generate_inputs

    inputs = generate_inputs(TrafficConfig(seed=11, events=20_000, creators=40, senders=1_500, rate_per_s=40.0,
                                           malformed_rate=0.01, accounts=True, payout_rate=0.004))
    result, truth = _cross_check(
        policy, inputs.gifts, inputs.payouts,
        [(k, v, t) for (k, v), t in zip(inputs.accounts, inputs.account_times, strict=True)],
        partitions=3, batch_size=batch_size)
    st = inputs.input_stats
    assert truth["payouts"] == st.good_payouts and truth["payout_duplicates"] == st.payout_duplicates
    assert truth["payouts_refused"] == sum(st.bad_payouts.values())
    assert truth["accounts_refused"] == sum(st.bad_accounts.values())
    assert any(n.trigger == "account" for n in result.outputs.notices)


@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_merged_replay_gives_the_same_bytes_whatever_the_chunks_its_gifts_are_merged_in(policy, engine, tmp_path,
                                                                                         monkeypatch):
    """The merged replays take the gifts GIFT_CHUNK records at a time, a partition's gift input counting as one that
    may still deliver while more are to come: a record at a time, odd chunks and all at once give the same bytes out,
    for a session and for a recording of the same records."""
    from load.generator import TrafficConfig, generate_inputs
    from stream.engine.order import Input
    from stream.kafka.recording import Record, RecordingWriter, TopicInfo, new_header, read_recording
    from stream.kafka.routing import PartitionCache
    from stream.kafka.session_files import key_of
    from stream.runtime import replay as replays

    if engine == "native" and not native_available():
        pytest.skip("native engine not built")
    inputs = generate_inputs(TrafficConfig(seed=5, events=3_000, creators=12, senders=300, rate_per_s=40.0,
                                           malformed_rate=0.02, late_rate=0.02, accounts=True, payout_rate=0.01))
    accounts = [(k, v, t) for (k, v), t in zip(inputs.accounts, inputs.account_times, strict=True)]
    session = replays.Session(inputs.gifts, inputs.payouts, [replays.AccountRecord(k, v, t) for k, v, t in accounts])
    owners, partitions = PartitionCache(3), 3
    records, ends = [], {kind: dict.fromkeys(range(partitions), 0) for kind in Input}
    for kind, stream, times in ((Input.GIFTS, [(key_of(g)[0], g) for g in inputs.gifts], inputs.gift_times),
                                (Input.PAYOUTS, [(key_of(q)[0], q) for q in inputs.payouts], inputs.payout_times),
                                (Input.ACCOUNTS, [(k, v) for k, v, _ in accounts], inputs.account_times)):
        for (key, value), t in zip(stream, times, strict=True):
            p = 0 if key is None else owners[key]
            records.append(Record(kind, p, ends[kind][p], t, key, value))
            ends[kind][p] += 1
    names = {Input.GIFTS: "gifts", Input.PAYOUTS: "payouts", Input.ACCOUNTS: "creator-accounts"}
    header = new_header({kind: TopicInfo(names[kind], partitions) for kind in Input},
                        {kind: {p: (0, n) for p, n in ends[kind].items()} for kind in Input})
    with RecordingWriter(tmp_path / "r.jsonl", header) as w:
        for r in sorted(records, key=lambda r: (r.input, r.partition, r.offset)):
            w.write(r)
    recording = read_recording(tmp_path / "r.jsonl")

    def outputs(chunk: int) -> list[dict[str, bytes]]:
        """Each output file of the session's replay, then of the recording's."""
        monkeypatch.setattr(replays, "GIFT_CHUNK", chunk)
        got = []
        for n, result in enumerate((replays.replay(session, policy, partitions=partitions, final=True, engine=engine),
                                    replays.replay_recording(recording, policy, final=True, engine=engine))):
            result.summary.pop("seconds")
            result.summary.pop("events_per_second")
            got.append({name: path.read_bytes()
                        for name, path in replays.write_outputs(result, tmp_path / f"{chunk}-{n}").items()})
        return got

    whole = outputs(10**9)
    for files in whole:
        assert all(files[name] for name in ("payout-notices", "creator-window-totals"))
        assert all(b'"source_topic":"%s"' % t in files["gifts-dlq"] for t in (b"payouts", b"creator-accounts"))
    assert outputs(1) == whole and outputs(37) == whole


def test_a_payout_at_the_time_of_the_gift_that_credits_its_money_applies(policy):
    """A payout that holds the time of the gift that credits its money is merged after the gift (the tie rule), so
    it applies; a milli-diamond more would not."""
    from tests.support.events import T0, gift, payout

    g = gift(creator_id="c1", diamond_count=5, ts=T0)  # 5,000 milli-diamonds in the US
    _, truth = _cross_check(policy, [g], [payout("p1", "c1", 5_000)])  # payout() is at T0
    assert truth["payouts"] == 1 and truth["balances"] == {"c1": 0}
    _, truth = _cross_check(policy, [g], [payout("p2", "c1", 5_001)])
    assert truth["payouts"] == 0 and truth["payouts_refused"] == 1 and truth["balances"] == {"c1": 5_000}


def _payout_at(pid: str, creator: str, milli: int, ts: int) -> bytes:
    return json.dumps({"payout_id": pid, "creator_id": creator, "milli_diamonds": milli, "ts": ts}).encode()


def test_the_times_the_records_hold_decide_the_order(policy):
    from tests.support.events import T0, gift

    g = gift(creator_id="c1", diamond_count=10, ts=T0 + 1_000)  # a US gift: 10,000 milli-diamonds, 5,000 in ID
    moved = (b"c1", _account("c1", "ID", ts=T0 + 2_000), 0)
    _, after = _cross_check(policy, [g], accounts=[moved])  # the account is newer than the gift
    _, before = _cross_check(policy, [gift(creator_id="c1", diamond_count=10, ts=T0 + 3_000)], accounts=[moved])
    assert before["balances"] == {"c1": 5_000} and after["balances"] == {"c1": 10_000}
    # a payout older than its gift finds no balance; after it, it applies
    _, early = _cross_check(policy, [g], [_payout_at("p1", "c1", 4_000, T0 + 500)])
    _, late = _cross_check(policy, [g], [_payout_at("p1", "c1", 4_000, T0 + 1_500)])
    assert early["balances"] == {"c1": 10_000} and late["balances"] == {"c1": 6_000}
    # each input keeps its offset order: a gift at 100 holds back the gift at 50 behind it, so the payout at 60
    # comes before both (sorting by time would put one gift before it)
    g100, g50 = (gift(creator_id="c1", diamond_count=10, ts=T0 + t) for t in (100, 50))
    _, held = _cross_check(policy, [g100, g50], [_payout_at("p1", "c1", 10_000, T0 + 60)])
    assert held["payouts"] == 0 and held["balances"] == {"c1": 20_000}
    # a tombstone is ordered by its Kafka timestamp; a closed account keeps its region
    closed = (b"c1", None, T0 + 2_500)
    _, kept = _cross_check(policy, [gift(creator_id="c1", diamond_count=10, ts=T0 + 3_000)], accounts=[moved, closed])
    assert kept["balances"] == {"c1": 5_000} and kept["accounts"] == {"c1": ("ID", "closed")}
    # closed without an account, the creator keeps the region of its latest credit
    in_id = gift(creator_id="c1", diamond_count=10, region="ID", ts=T0 + 1_000)
    no_region = gift(creator_id="c1", diamond_count=10, region="", ts=T0 + 3_000)
    _, home = _cross_check(policy, [in_id, no_region], accounts=[closed])
    assert home["accounts"] == {"c1": ("ID", "closed")} and home["balances"] == {"c1": 10_000}  # not US's 15,000


def test_ground_truth_refuses_the_account_records_the_engine_refuses(policy):
    from tests.support.events import T0, gift

    g = gift(creator_id="c1", diamond_count=10, ts=T0)
    bad = [(b"c1", _account("c1", "ID", status="on_hold"), 10), (b"c1", _account("c1", "ID", method="crypto"), 20),
           (b"c1", _account("c1", "ZZ"), 30), (b"c2", _account("c1", "ID"), 40), (None, None, 50),
           (b"c1", b'{"creator_id": "c1", "creator_id": "c1"}', 60), (b"c1", b"not json", 70)]
    _, truth = _cross_check(policy, [g], accounts=bad)
    assert truth["accounts_refused"] == len(bad) and truth["balances"] == {"c1": 10_000} and not truth["accounts"]


def test_the_old_gift_only_call_still_agrees(policy):
    """expected() of gift records alone: region-less gifts (the dirt's missing_field drops the region sometimes)
    are priced in the policy's default region, as the engine does."""
    from load.generator import TrafficConfig, generate
    from load.ground_truth import expected
    from stream.runtime.replay import replay

    records = list(generate(TrafficConfig(seed=2, events=20_000, creators=40, senders=1_500, rate_per_s=300.0,
                                          malformed_rate=0.03)))
    rates = {r: rp.diamonds_per_coin for r, rp in policy.regions.items()}
    truth = expected(records, rates, 3, policy.max_future_ms, policy.dedupe_horizon_ms, policy.max_record_bytes,
                     default_region=policy.default_region)
    result = replay(records, policy, partitions=3, final=True, engine="python")
    assert {c: s.balance for e in result.engines.values() for c, s in e.state.creators.items()} == truth["balances"]
    assert result.summary["accepted"] == truth["accepted"]
    parsed = []
    for r in records:
        with contextlib.suppress(ValueError):
            parsed.append(json.loads(r))
    assert any(isinstance(d, dict) and "region" not in d and "creator_id" in d for d in parsed)  # they are there


# ------------------------------------------------------------------ a run with payouts and accounts, no broker

class _Cluster(_FakeProducer):
    """A producer, consumer and admin client over in-memory topics of 3 partitions: it keeps every record it is
    sent, with its key and the timestamp its batch was stamped with, and the group commits, at each poll, what was
    in the topics at the previous one."""

    def __init__(self) -> None:
        super().__init__()
        self.topics: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int]]] = {}
        self.seen: dict = {}
        self.lookups = 0

    def create_batch(self):
        from aiokafka.producer.message_accumulator import BatchBuilder

        return BatchBuilder(1 << 16, 0)  # aiokafka's own: a record appended with no timestamp is stamped then

    async def send_batch(self, batch, topic, partition):
        from aiokafka.record.default_records import DefaultRecordBatch

        log = self.topics.setdefault((topic, partition), [])
        batch._set_producer_state(1, 0, len(log))
        built = DefaultRecordBatch(batch._build())
        base = len(log)
        log.extend((r.key, r.value, r.timestamp) for r in built)
        if topic == "gifts":
            self.next[partition] = len(log)
        return _acked(base)

    async def end_offsets(self, tps):
        return {tp: len(self.topics.get((tp.topic, tp.partition), ())) for tp in tps}

    async def close(self) -> None:
        pass

    async def find_coordinator(self, group_id):
        self.lookups += 1
        return 0

    async def _send_request(self, request, node):  # the admin client's, for the run's OffsetFetch
        tps = [TopicPartition(topic, p) for topic, ps in request._partitions for p in ps]
        now = {tp: len(self.topics.get((tp.topic, tp.partition), ())) for tp in tps}
        committed = {tp: self.seen.get(tp, -1) for tp in tps}
        self.seen.update(now)
        return SimpleNamespace(error_code=0, topics=[(topic, [(p, committed[TopicPartition(topic, p)], "", 0)
                                                              for p in ps]) for topic, ps in request._partitions])

    def consumer_records(self, topic: str, partitions: int = 3) -> dict[int, list]:
        from aiokafka.structs import ConsumerRecord

        return {p: [ConsumerRecord(topic, p, o, ts, 0, k, v, None, -1, -1, ())
                    for o, (k, v, ts) in enumerate(self.topics.get((topic, p), []))] for p in range(partitions)}


def _worker(policy, cluster: _Cluster, partitions: int = 3) -> tuple[dict[int, list], dict[int, list]]:
    """What the workers commit for the cluster's inputs: each partition's three inputs merged in their one order
    (stream.engine.order), run through the reference engine; (notices, changelog) as consumer records."""
    from aiokafka.structs import ConsumerRecord

    from stream.engine import model
    from stream.engine.order import FINISHED, Input, Pending, feed, runs
    from stream.engine.reference import Outputs, PartitionEngine
    from stream.kafka.routing import PartitionCache

    names = {Input.GIFTS: "gifts", Input.PAYOUTS: "payouts", Input.ACCOUNTS: "creator-accounts"}
    notices, changelog = {}, {}
    owners = PartitionCache(partitions)
    for p in range(partitions):
        engine = PartitionEngine(policy, p, source_topic="gifts", partitions=partitions, owners=owners)
        queues = [Pending(kind) for kind in Input]
        for kind in Input:
            log = cluster.topics.get((names[kind], p), [])
            queues[kind].add(list(range(len(log))), [v for _, v, _ in log], [ts for _, _, ts in log],
                             [k for k, _, _ in log])
        out = Outputs()
        for run in runs(queues, lambda: [FINISHED] * len(Input), lambda e=engine: e.watermark, policy.max_future_ms):
            feed(engine, run.input, queues[run.input].take(run.hi), out, names[run.input])
        records, _, _ = engine.take_changelog()
        notices[p] = [ConsumerRecord("payout-notices", p, i, 0, 0, None, model.encode(n), None, -1, -1, ())
                      for i, n in enumerate(out.notices)]
        changelog[p] = [ConsumerRecord("changelog", p, i, 0, 0, k, v, None, -1, -1, ())
                        for i, (k, v) in enumerate(records)]
    return notices, changelog


def _inputs():
    from load.generator import TrafficConfig, generate_inputs

    return generate_inputs(TrafficConfig(seed=5, events=6_000, creators=30, senders=800, rate_per_s=20_000.0,
                                         malformed_rate=0.01, accounts=True, payout_rate=0.01))


async def test_paced_producer_sends_each_input_to_its_topic_in_one_order():
    from load.producing import address_inputs
    from stream.kafka.routing import partition_for

    inputs = _inputs()
    topics = {"gifts": "gifts", "payouts": "payouts", "accounts": "creator-accounts"}
    routed = list(address_inputs(((topics[kind], k, v, t) for kind, k, v, t in inputs.in_time_order()), 3))
    cluster = _Cluster()
    acked: list[int] = []
    pp = PacedProducer(cluster, "gifts", 3, rate=None, on_batch=lambda p, base, n, t: acked.append(n))
    assert await pp.run(pp.shipments(routed, max_chunk=500)) == len(inputs.gifts)
    await asyncio.sleep(0)
    assert sum(acked) == len(inputs.gifts)  # the latency tracker hears of the gifts only
    assert pp.sent_to == {"payouts": len(inputs.payouts), "creator-accounts": len(inputs.accounts)}
    for topic, p in cluster.topics:
        assert [v for _, v, _ in cluster.topics[topic, p]] == [v for t, _, q, v, _ in routed if t == topic and q == p]
        stamps = [ts for _, v, ts in cluster.topics[topic, p] if v is not None]
        assert stamps == sorted(stamps)  # stamped as sent, in the one order
    # a tombstone carries its own time (the merge's), not the wall clock's: that would sort it a year later
    tombstones = [(k, t) for (k, v), t in zip(inputs.accounts, inputs.account_times, strict=True) if v is None]
    assert tombstones and all((k, None, t) in cluster.topics["creator-accounts", partition_for(k, 3)]
                              for k, t in tombstones)
    for (k, v), _ in zip(inputs.accounts, inputs.account_times, strict=True):
        assert (k, v) in [(key, value) for key, value, _ in cluster.topics["creator-accounts", partition_for(k, 3)]]
    assert any(v is None for (t, _), log in cluster.topics.items() if t == "creator-accounts" for _, v, _ in log)


@pytest.mark.parametrize("spoil", [None, "notice", "account"])
async def test_load_run_with_accounts_and_payouts_produces_and_verifies_without_a_broker(tmp_path, policy,
                                                                                        monkeypatch, spoil):
    """`load run --accounts` over an in-memory cluster: the accounts older than the first gift go first, the rest
    interleaved with the gifts and payouts; verify reads the topics back (with their timestamps) and passes on
    what a worker would commit, and fails the matching check when a notice is lost or an account differs."""
    from load.run import LoadRun, RunOptions
    from stream.config import WorkerConfig
    from stream.kafka import session_io
    from stream.state.changelog_schema import ACCOUNT_PREFIX
    from stream.state.tables import Account

    cluster = _Cluster()
    inputs = _inputs()

    class Run(LoadRun):
        async def _open(self) -> None:
            self.producer, self.consumer, self.admin = cluster, cluster, cluster

    async def read_topic(cfg, topic, committed_only=True):
        if topic in (cfg.topics.notices, cfg.topics.changelog):
            notices, changelog = _worker(policy, cluster)
            if spoil == "notice":
                notices[max(notices, key=lambda p: len(notices[p]))].pop()
            if spoil == "account":  # one account of the changelog is not the one the inputs make
                records = next(rs for rs in changelog.values() if any(r.key.startswith(ACCOUNT_PREFIX) for r in rs))
                i = next(i for i, r in enumerate(records) if r.key.startswith(ACCOUNT_PREFIX))
                other = Account("US", "verified", "paypal", 30, 0)
                records[i] = dataclasses.replace(records[i], value=msgspec.msgpack.encode(other))
            return notices if topic == cfg.topics.notices else changelog
        return cluster.consumer_records(topic)

    monkeypatch.setattr(session_io, "read_topic", read_topic)
    opts = RunOptions(rate=50_000, duration=10, out=tmp_path / "r", generate_live=True, quiet=True)
    report = await Run(WorkerConfig(group_id="g"), policy, inputs, opts).run()
    r, v = report["results"], report["verification"]
    first = inputs.gift_times[0]
    early = sum(t < first for t in inputs.account_times)
    assert r["produced"] == r["committed"] == len(inputs.gifts) and r["drained"]
    assert r["produced_to"] == {"creator-accounts": len(inputs.accounts), "payouts": len(inputs.payouts)}
    assert report["config"]["inputs"]["account_records"] == len(inputs.accounts)
    stamps = {t: [ts for (topic, _), log in cluster.topics.items() if topic == t for _, _, ts in log]
              for t in ("gifts", "creator-accounts")}
    assert sum(ts < min(stamps["gifts"]) for ts in stamps["creator-accounts"]) >= early > 0  # the first ones first
    assert v["records"] == len(inputs.gifts) and v["payouts"] == len(inputs.payouts)
    assert v["account_records"] == len(inputs.accounts)
    failed = {c["name"] for c in v["checks"] if not c["passed"]}
    if spoil is None:
        assert v["passed"] is True, json.dumps(v["checks"], indent=1)
        details = {c["name"]: c["detail"] for c in v["checks"]}
        assert "sent by an account update" in details["notices equal the offline replay's (byte for byte)"]
        # in the order the run stamped them, every payout the generator sized to fit applied, and no other
        applied = details["payouts applied equal the offline replay's and the ground truth's"]
        assert applied.startswith(f"{inputs.input_stats.good_payouts:,} applied of {len(inputs.payouts):,}")
    elif spoil == "notice":
        assert failed == {"notices equal the offline replay's (byte for byte)"}
    else:
        assert failed == {"changelog accounts equal the offline replay's (and the ground truth's region and status)"}


def test_a_failed_notice_check_names_the_notices_that_differ():
    from load.verify import _notices_apart
    from stream.engine import model
    from stream.engine.policy import load_policy
    from stream.engine.reference import payout_notice

    policy = load_policy()
    a, b, c = (model.encode(payout_notice(policy, cid, "US", None, 1, 3_000_000, "e1", 0)) for cid in "abc")
    b2 = model.encode(payout_notice(policy, "b", "US", None, 1, 4_000_000, "e1", 0))
    assert _notices_apart([a, b], [b2, c]) == "; only live: ['pn-a-1'], only offline: ['pn-c-1'], " \
                                             "different bytes: ['pn-b-1']"


async def test_a_coordinator_still_loading_is_a_failed_poll_not_a_lag_spike(tmp_path, policy):
    """Right after a broker restart the group coordinator answers OffsetFetch with a top-level
    COORDINATOR_LOAD_IN_PROGRESS and -1 for every partition; aiokafka's admin client reads only the per-partition
    errors, so the chaos run's lag jumped to the whole topic for a poll. Such an answer is a failed poll now."""
    from load.run import LoadRun, RunOptions
    from stream.config import WorkerConfig

    prod = _FakeProducer()
    prod.next = {0: 500, 1: 500, 2: 500}
    group = _FakeGroup(prod)
    loading = {"yes": True}
    answer = group._send_request

    async def send(request, node):
        if loading["yes"]:
            return SimpleNamespace(error_code=14, topics=[(t, [(p, -1, "", 0) for p in ps])
                                                          for t, ps in request._partitions])
        return await answer(request, node)

    group._send_request = send
    run = LoadRun(WorkerConfig(group_id="g"), policy, iter(()), RunOptions(rate=None, duration=1, out=tmp_path))
    run.producer, run.consumer, run.admin = prod, group, group
    run.partitions = 3
    run._tps = [TopicPartition(run.topic, p) for p in range(3)]
    run._base_end = {p: 0 for p in range(3)}
    run.pp = SimpleNamespace(sent=0)
    assert await run._poll_once() is None and run.poll_failures == 1 and not run.points
    loading["yes"] = False
    assert await run._poll_once() == 1_500 and run.poll_failures == 1  # nothing committed yet: a real lag
