"""One order across a partition's three inputs: gifts-p, payouts-p and creator-accounts-p.

They are merged into one sequence as Kafka Streams merges the partitions of a task (its PartitionGroup):
  1. each input keeps its offset order (a record never overtakes an earlier record of its own input, whatever
     their timestamps);
  2. the next record is the head with the smallest record timestamp among the inputs' heads;
  3. at equal timestamps, the tie rule: creator-accounts, then gifts, then payouts (an account applies to the gifts
     of its instant; a payout follows the gifts whose money it pays out);
  4. the merge goes on only while it can decide: the head may go when every input without a record waiting is
     known to hold none that belongs before it (its horizon, below). Offline every input is complete, so a replay
     decides everything at once;
  5. a record whose time is more than the policy's max_future past the partition's watermark counts as at the
     watermark, decided when it is the head of its input, with the watermark the merged records before it leave
     (`merge_time`): a gift's is a bad time (the engine rejects it), a payout's or an account's a producer's clock
     gone wrong; either way it must not hold its input back until every other record has gone.
Because the order depends only on the records (their times and offsets) and on the state the records before them
made, a live run, a restart, a rebuild by a new group and an offline replay process the same sequence, and so make
the same bytes, as long as the merge never decides without a record that belongs before the one it takes.

Live, that is the horizon's job. Fetches are named by the wall-clock time they were sent. Each record waiting
carries the first fetch that reported it on the broker (`Pending.add`'s arrived_ms). An input with nothing waiting
has a horizon: the last fetch as of which it was caught up (position at the end a read_committed reader can reach),
minus max_task_idle_ms. A record may go past that input when its fetch is not later than the horizon: a broker
answers one fetch after another, so the same or a later fetch saw the waiting input's log at least as late as the
record's, and nothing that was on the broker before the record is missing. That is Kafka Streams' rule
(max.task.idle.ms = 0: wait for what the brokers already have, not for what producers may still send), and it
holds whatever the worker's lag, pauses or CPU. max_task_idle_ms adds slack for producers that append a record
belonging before another a little after it (default 100 ms; a load run's gifts reach their topic up to 2 s after
their own time, and without the slack its verification fails, docs/benchmarks.md), and for inputs led by other
brokers than the gifts' (their fetches are answered apart, up to fetch_max_wait_ms); every record then waits that
long while another input is empty. A worker that is
behind, starved of CPU or just restarted waits for fresher fetches, not for a timer. A record appended later than
the slack (a payout produced an hour after its time) is merged where it is found, live, and by its time offline:
the one way the two can differ.

A record's timestamp is taken from the record itself, as a Kafka Streams TimestampExtractor would (`record_time`):
a gift's and a payout's `ts`, an account's `updated_ts`. So the order does not depend on how a producer stamped
the Kafka record (replaying an old session stamps it now, which keeps it clear of the topics' time retention), and a
session file carries all it needs. A tombstone has no value: its time is the Kafka record's timestamp (a session
file's tombstone line gives it, and `replay --to-kafka` stamps the record with it; the accounts topic is compacted,
so no retention by time applies). A record whose time cannot be read (bad input, dead-lettered anyway) has time 0:
it goes as soon as it is at the head of its input.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec

from stream.engine import model
from stream.engine.protocol import Engine, Outputs

try:
    from stream import _native
except ImportError:  # not built
    _native = None

FINISHED = 2**63 - 1  # the horizon of an input that can deliver nothing more (offline; a topic not assigned)
UNKNOWN = -1  # the horizon of an input that may still deliver anything (not caught up, or not fetched yet)
LET_GO_AFTER = 4096  # processed records a Pending may keep before it drops them (the drop is amortised over them)


class Input(enum.IntEnum):
    """The inputs of a partition; the value is the tie rule's rank (lowest first)."""

    ACCOUNTS = 0
    GIFTS = 1
    PAYOUTS = 2


@dataclass(slots=True)
class Pending:
    """One input's records waiting to be processed, in offset order (the value of a tombstone is None), with their
    Kafka timestamps. Their times for the merge (record_time) are read only when the merge needs them: a gift
    batch with nothing waiting beside it is never looked into."""

    kind: Input
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    kafka_ts: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)  # kept for the accounts (a tombstone has only its key)
    times: list[int] = field(default_factory=list)  # the merge's timestamps of the first len(times) records
    # The fetch that first reported the records, per add: (index after its last record, its send time in
    # wall-clock ms), rising.
    arrivals: list[tuple[int, int]] = field(default_factory=list)
    start: int = 0  # index of the next record to process
    # Reads the gifts' times (values, lo) -> times of values[lo:]: the partition's Engine.gift_times, so the
    # compiled engine keeps what it decoded for its process; module gift_times when None.
    gift_times: Callable[[list[bytes | None], int], list[int]] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - self.start

    def add(self, offsets: list[int], values: list[bytes | None], kafka_ts: list[int],
            keys: list[bytes | None] | None = None, times: list[int] | None = None, arrived_ms: int = 0) -> None:
        """times: the records' merge times when the caller read them already (they must be record_time's).
        arrived_ms: the send time (wall-clock ms) of the fetch that first reported them (0 offline, where every
        input is complete)."""
        self._let_go_of_processed()
        if times is not None and len(self.times) == len(self.offsets):
            self.times += times
        self.offsets += offsets
        self.values += values
        self.kafka_ts += kafka_ts
        self.keys += keys if keys is not None else [None] * len(offsets)
        if self.arrivals:
            arrived_ms = max(arrived_ms, self.arrivals[-1][1])  # a clock set back must not reorder the adds
        self.arrivals.append((len(self.offsets), arrived_ms))

    def _let_go_of_processed(self) -> None:
        """Drop the records already processed once they are at least as many as those waiting (and not few). Live,
        with the slack, an input in steady traffic never runs empty, so `take` alone would keep every record it
        ever held. Only here, between plans: a plan's runs index the lists as they are."""
        done = self.start
        if done < LET_GO_AFTER or done < len(self.offsets) - done:
            return
        for column in (self.offsets, self.values, self.kafka_ts, self.keys, self.times):
            del column[:done]  # times may be shorter: what is left of it still starts at the next record
        self.arrivals = [(end - done, arrived) for end, arrived in self.arrivals]  # take() dropped those <= start
        self.start = 0

    def arrived_by(self, horizon: int, hi: int) -> int:
        """The end of the records before index `hi` first reported by a fetch sent by `horizon` (arrivals rise,
        so they are the first ones); at or below `start` when none were."""
        first = 0
        for end, arrived in self.arrivals:
            if arrived > horizon:
                return min(first, hi)
            first = end
        return hi

    @property
    def stamps(self) -> list[int]:
        """The merge's timestamp of every record held (record_time; a tombstone's is its Kafka timestamp)."""
        if len(self.times) < len(self.offsets):
            kind, values, kafka = self.kind, self.values, self.kafka_ts
            if kind is Input.GIFTS:  # most of the records: read in the compiled module when it is built
                self.times += (self.gift_times or gift_times)(values, len(self.times))
                return self.times
            tombstones = kind is Input.ACCOUNTS  # a null gift or payout is bad input: time 0, as unreadable
            self.times += [kafka[i] if values[i] is None and tombstones else record_time(kind, values[i]) or 0
                           for i in range(len(self.times), len(values))]
        return self.times

    def take(self, end: int) -> tuple[list[int], list[bytes | None], list[int], list[bytes | None]]:
        """(offsets, values, Kafka timestamps, keys) from the next record up to index `end` (exclusive); they are
        done with."""
        lo = self.start
        self.start = end
        taken = self.offsets[lo:end], self.values[lo:end], self.kafka_ts[lo:end], self.keys[lo:end]
        if self.start == len(self.offsets):  # all processed: start the lists afresh
            self.offsets, self.values, self.kafka_ts, self.keys, self.times, self.start = [], [], [], [], [], 0
            self.arrivals = []
        else:
            while self.arrivals and self.arrivals[0][0] <= self.start:
                del self.arrivals[0]  # adds all done with
        return taken


def new_queues(gift_times: Callable[[list[bytes | None], int], list[int]] | None = None) -> list[Pending]:
    """A partition's empty queue of each input, in Input order; the gifts' times read by `gift_times` (the
    partition's Engine.gift_times)."""
    return [Pending(kind, gift_times=gift_times if kind is Input.GIFTS else None) for kind in Input]


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive records of one input, next in the merged order: indices [lo, hi) of its Pending."""

    input: Input
    lo: int
    hi: int


def plan(pending: Sequence[Pending], horizons: Sequence[int], watermark: int | None = None,
         max_future_ms: int | None = None) -> list[Run]:
    """The runs the merge can decide now, in order (the module docstring's rules). pending[i] and horizons[i] are
    Input i's: while it has nothing waiting, a record of another input first reported by a fetch sent by
    horizons[i] may go past it (FINISHED: anything may; UNKNOWN: nothing may). watermark, max_future_ms: the
    partition's engine's, for rule 5 (merge_time). The Pendings are not changed: take each run's records with
    Pending.take(run.hi), then plan again (`runs` does): after a run of gifts beside another input's records, the
    watermark may have moved, so the plan stops there."""
    pos = [p.start for p in pending]
    ends = [len(p.offsets) for p in pending]
    runs: list[Run] = []
    bound = None if watermark is None or max_future_ms is None else watermark + max_future_ms
    while True:
        waiting = [i for i in range(len(pending)) if pos[i] < ends[i]]
        if not waiting:
            return runs
        # How far the inputs with nothing waiting let the others go.
        horizon = min((horizons[i] for i in range(len(pending)) if pos[i] == ends[i]), default=FINISHED)
        if len(waiting) == 1:  # one input alone: no time to compare, only the horizon of the others
            first = waiting[0]
            end = pending[first].arrived_by(horizon, ends[first])
            if end > pos[first]:
                runs.append(Run(Input(first), pos[first], end))
            return runs
        heads = sorted((merge_time(pending[i].stamps[pos[i]], watermark, bound), i)
                       for i in waiting)  # by time, then rank (the tie rule)
        (_, first), (limit, other) = heads[0], heads[1]
        stamps, j = pending[first].stamps, pos[first]
        end = pending[first].arrived_by(horizon, ends[first])
        if end <= j:
            return runs  # the head waits for an input that may still deliver a record before it
        # The head goes, then the records after it while they sort before the next input's head: before its time,
        # or at it when the tie rule ranks this input first. A record past the bound ends the run (the next head's
        # time is at most the bound): its time is decided when it is the head, with the watermark the gifts before
        # it leave.
        j += 1
        if first == Input.GIFTS and watermark is None and max_future_ms is not None:
            runs.append(Run(Input(first), pos[first], j))  # the partition's first gift sets the watermark, which rule 5
            return runs  # needs for the other heads: plan again with it
        j = run_end(stamps, j, end, limit, first < other)
        runs.append(Run(Input(first), pos[first], j))
        pos[first] = j
        if first == Input.GIFTS:
            return runs  # the gifts may move the watermark: plan again from here


def gift_time(value: bytes | None) -> int:
    """A gift record's merge time: record_time, 0 when unreadable."""
    return record_time(Input.GIFTS, value) or 0


def gift_times(values: list[bytes | None], lo: int) -> list[int]:
    """The merge times of gift records values[lo:] (record_time, 0 when unreadable)."""
    if _native is None:
        return [gift_time(v) for v in values[lo:]]
    return _native.gift_times(values, lo, model.MAX_JSON_DEPTH, gift_time)


def _run_end(stamps: list[int], lo: int, hi: int, limit: int, through_ties: bool) -> int:
    """The first index in [lo, hi) whose stamp is past limit (at it too, unless through_ties), else hi."""
    j = lo
    while j < hi and (stamps[j] < limit or (through_ties and stamps[j] == limit)):
        j += 1
    return j


# The same loop compiled: it walks every gift that another input's records wait beside.
run_end = _run_end if _native is None else _native.run_end


def merge_time(ts: int, watermark: int | None, bound: int | None) -> int:
    """Rule 5: a record's time, unless it is more than max_future_ms past the watermark (bound); then it counts as
    at the watermark, so a bad time cannot hold the records behind it back while the other inputs' records overtake
    them (offline until the end, live only until the others run empty: the two would differ)."""
    return ts if bound is None or ts <= bound else watermark


def runs(pending: Sequence[Pending], horizons: Callable[[], Sequence[int]],
         watermark: Callable[[], int | None], max_future_ms: int) -> Iterator[Run]:
    """Every run the merge can decide, planned again after each plan's runs (take each before asking for the next):
    horizons() and watermark() are asked anew each time."""
    while True:
        planned = plan(pending, horizons(), watermark(), max_future_ms)
        if not planned:
            return
        yield from planned


def feed(engine: Engine, kind: Input, records: tuple[list[int], list[bytes | None], list[int], list[bytes | None]],
         out: Outputs, source_topic: str) -> int:
    """Run one input's consecutive records (Pending.take's) through the engine; returns how many. source_topic:
    the input's topic, which its dead letters name."""
    offsets, values, kafka_ts, keys = records
    if not offsets:
        return 0
    if kind is Input.GIFTS:
        engine.process(values if None not in values else [v if v is not None else b"" for v in values], offsets, out)
        return len(offsets)
    limit = engine.policy.max_record_bytes  # the gifts' decoder holds them to it; the others' here
    if kind is Input.PAYOUTS:
        raws = [v if v is not None else b"" for v in values]
        engine.apply_payouts([_oversize(r, limit) or model.decode_payout(r) for r in raws], raws, offsets, out,
                             source_topic)
    else:
        engine.apply_accounts([(v is not None and _oversize(v, limit)) or model.decode_account(k, v, t)
                               for k, v, t in zip(keys, values, kafka_ts, strict=True)], values, offsets, out,
                              source_topic)
    return len(offsets)


def _oversize(raw: bytes, limit: int) -> tuple[str, str] | None:
    return (model.OVERSIZE, f"record is {len(raw)} bytes, limit {limit}") if len(raw) > limit else None


# ---------------------------------------------------------------- the time of a record of a session file

class _Ts(msgspec.Struct):
    ts: int


class _UpdatedTs(msgspec.Struct):
    updated_ts: int


_time_decoders = {Input.GIFTS: msgspec.json.Decoder(_Ts), Input.PAYOUTS: msgspec.json.Decoder(_Ts),
                  Input.ACCOUNTS: msgspec.json.Decoder(_UpdatedTs)}


def record_time(kind: Input, value: bytes | None) -> int | None:
    """The record's own time (gift and payout: `ts`; account: `updated_ts`), None when it cannot be read."""
    if value is None:
        return None
    try:
        got = _time_decoders[kind].decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return valid_time(got.ts if kind is not Input.ACCOUNTS else got.updated_ts)


def valid_time(t: object) -> int | None:
    """A record's time as the merge takes it: an int in [0, 2**63), else None (unreadable: the merge uses 0)."""
    return t if type(t) is int and 0 <= t < 2**63 else None


def tombstone_times(values: Sequence[bytes | None], given: Sequence[int | None] | None) -> list[int | None]:
    """The Kafka timestamps to give a session file's records when they are produced: a tombstone's time (`given`),
    None (the producer's clock) for every other record, whose time is in its value."""
    return [given[i] if given is not None and values[i] is None else None for i in range(len(values))]
