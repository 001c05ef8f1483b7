"""The engine boundary: what the runtime (stream.runtime, stream.state.changelog, stream.service) asks of an engine,
each with one signature, and the values that cross it.

Two engines implement `Engine`: the reference engine in Python (stream.engine.reference.PartitionEngine, the
specification) and the compiled one (stream.engine.native.NativePartitionEngine, Rust); stream.engine.native.make_engine
builds either. Nothing outside stream.engine asks which one it holds: a difference the runtime would need is a method
here that both implement. The tests hold the two to the same outputs, changes and state.

This module imports no engine, so the state and runtime layers can depend on the boundary without depending on an
implementation (stream.state.changelog does; the reference engine in turn writes its changelog with it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stream.engine.model import AccountClosed, CreatorAccount, DeadLetter, LateGift, Payout, PayoutNotice, WindowTotal
from stream.engine.policy import Policy
from stream.state.tables import Account, CreatorState, PartitionState, Streak

if TYPE_CHECKING:  # the compiled module is optional at run time; its types are in stream/_native.pyi
    from stream._native import RecordBatchBuilder


@dataclass
class Outputs:
    """What one or more batches produced, in emission order."""

    notices: list[PayoutNotice] = field(default_factory=list)
    window_totals: list[WindowTotal] = field(default_factory=list)
    late: list[LateGift] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    def extend(self, later: Outputs) -> None:
        """Append what `later` holds, as if it had been emitted here after what this holds."""
        self.notices += later.notices
        self.window_totals += later.window_totals
        self.late += later.late
        self.dead_letters += later.dead_letters
        self.stats.update(later.stats)


@dataclass(frozen=True)
class StateSizes:
    creators: int
    streaks: int
    dedupe_ids: int
    pane_tallies: int
    open_streaks: int
    balance_milli_diamonds: int  # summed over the creators
    accounts: int = 0  # account records held


@dataclass(frozen=True)
class StateCounts:
    """What the state-size gauges show: the entries of the state's big tables, each counted in O(1)."""

    creators: int
    streaks: int
    dedupe_ids: int


@dataclass(frozen=True)
class PricedIn:
    """What a partition's state needs its policy to price (Policy.cannot_price): the regions its open streaks were
    priced in (their coins are credited at that region's rate when they close), and the (region, payout method)
    of each account that is not closed (its notices charge that method's fee in that region)."""

    streak_regions: frozenset[str]
    account_methods: frozenset[tuple[str, str]]


@dataclass
class Changes:
    """What changed since the last changelog drain, as values (the reference engine's take_changes;
    stream.state.changelog.encode_changes turns it into records). None marks a deleted key."""

    watermark: int | None
    close_cursor: int | None
    creators: list[tuple[str, tuple | None]]  # tables.CREATOR_FIELDS (region, balance, ..., above, low)
    panes: list[tuple[str, int, list[int] | None]]  # (creator, pane start, [milli_diamonds, credits])
    streaks: list[tuple[str, Streak | None]]
    seen_chunks: list[tuple[int, int, list[str]]]  # (bucket, index of the first new id, the new ids)
    expired_buckets: list[int]
    payouts: list[str]
    accounts: list[tuple[str, Account]] = field(default_factory=list)  # accounts changed (never deleted)


Record = tuple[bytes, bytes | None]  # a changelog record: key, value (None: a tombstone)
# An engine's changelog drain: (records, the dedupe chunks they start [(bucket, start)], expired buckets).
Changelog = tuple[list[Record], list[tuple[int, int]], list[int]]
ChunkStarts = list[tuple[int, list[int]]]  # each dedupe bucket's chunk starts, for the changelog writer


class Restore(Protocol):
    """Changelog records gathered into a partition's state as they are read, for an engine to adopt
    (stream.state.changelog.StateRestore drives it): stream._native.ChangelogRestore for the compiled engine,
    stream.state.changelog.RecordsRestore for the reference engine."""

    @property
    def records(self) -> int:
        """Records applied so far."""
        ...

    def apply(self, keys: list[bytes], values: list[bytes | None]) -> None:
        """Records oldest first, keys and values side by side; a None value is a tombstone."""
        ...

    def apply_body(self, body: bytes) -> None:
        """A checkpoint's body (stream.state.changelog.state_body's format)."""
        ...


class Engine(Protocol):
    """One input partition's engine: gift records and payouts in, outputs, changelog and state out."""

    policy: Policy
    partition: int  # the input partition it processes
    partitions: int  # of the input topics (co-partitioned): a record belongs where its creator_id hashes
    source_topic: str  # the topic its gift records come from (dead letters name it)

    def process(self, raws: list[bytes], offsets: list[int] | int | None = None,
                out: Outputs | None = None) -> Outputs:
        """One batch of raw gift records of this partition, in offset order; returns `out` (a new Outputs when
        None). offsets: one per record, or the offset of the first of consecutive records (an offline replay);
        dead letters carry them."""
        ...

    def gift_times(self, values: list[bytes | None], lo: int) -> list[int]:
        """The merge times of gift records values[lo:] of this partition, in order (stream.engine.order.gift_time's
        rule), read before their turn comes. The compiled engine keeps what it decoded of them, so `process`, given
        them next, does not decode them again."""
        ...

    @staticmethod
    def process_routed(engines: Sequence[Engine], raws: list[bytes], offsets: list[int] | int | None,
                       out: Outputs) -> None:
        """One batch for every partition's engine (an offline replay; `engines[p]` is partition p's, all of one
        kind): each record goes to the engine of its creator's partition (Kafka's murmur2; a record that does not
        decode goes to partition 0), decoded once. Outputs come partition by partition, as if each engine had
        processed its share of the batch."""
        ...

    def apply_payouts(self, payouts: list[Payout | tuple[str, str]], raws: list[bytes], offsets: list[int] | None,
                      out: Outputs, source_topic: str = "payouts") -> None:
        """Payouts made by the payment system (model.decode_payout's results, with their raw records)."""
        ...

    def apply_accounts(self, accounts: list[CreatorAccount | AccountClosed | tuple[str, str]], raws: list[bytes | None],
                       offsets: list[int] | None, out: Outputs, source_topic: str = "creator-accounts") -> None:
        """Creator account records (model.decode_account's results, with their raw values; None for a tombstone),
        in offset order: each replaces the creator's account; one that makes an eligible creator's balance reach
        its threshold emits the notice then."""
        ...

    def account(self, creator_id: str) -> Account | None:
        """One creator's account (a copy from the compiled engine), or None if no record named it here."""
        ...

    def end_of_stream(self, out: Outputs) -> None:
        """The partition's input is finished (end of a recorded session): time out every open streak and close
        every window."""
        ...

    def take_changelog(self) -> Changelog:
        """The changelog records of the keys changed since the last drain; forgets them."""
        ...

    def take_changelog_batches(self, max_bytes: int, transactional: bool,
                               timestamp_ms: int) -> tuple[list[RecordBatchBuilder], list[tuple[int, int]], list[int]]:
        """take_changelog() with its records in Kafka record batches (stream._native.RecordBatchBuilder, at most
        max_bytes each) for producer.send_batch: (batches, new dedupe chunks, expired buckets)."""
        ...

    def clear_changes(self) -> None:
        """Forget the changed keys (an offline replay has no changelog to write them to)."""
        ...

    def snapshot_body(self, chunks: dict[int, list[int]]) -> bytes:
        """The whole state as a checkpoint body (stream.state.changelog.state_body's format), the dedupe ids cut
        at `chunks` (the changelog writer's chunk starts per bucket). Safe in a thread while the engine is idle."""
        ...

    def adopt(self, restore: Restore) -> ChunkStarts:
        """Run on the state `restore` gathered (the Restore of this engine's kind), replacing the one held;
        `restore` is empty afterwards. Returns each dedupe bucket's chunk starts for the changelog writer.
        ValueError: the records do not make a state. Safe in a thread (the native engine releases the GIL)."""
        ...

    @property
    def watermark(self) -> int | None:
        """The highest accepted event time (None before the first event)."""
        ...

    @property
    def close_cursor(self) -> int | None:
        """Every window ending at or before this is closed and emitted."""
        ...

    @property
    def state(self) -> PartitionState:
        """The whole state (the compiled engine's: a copy; for snapshots, reports and tests). Read it, never
        change it."""
        ...

    def creator(self, creator_id: str) -> CreatorState | None:
        """One creator's state (a copy from the compiled engine), or None if it has none here."""
        ...

    def sizes(self) -> StateSizes:
        """How much state the engine holds, with sums that walk every creator and streak (reports, tests)."""
        ...

    def counts(self) -> StateCounts:
        """The table sizes alone, without walking them: the worker's gauges and log lines ask for them between
        batches, on the event loop."""
        ...

    def priced_in(self) -> PricedIn:
        """What its state needs the policy to price (checked after a restore: state kept from an older policy)."""
        ...
