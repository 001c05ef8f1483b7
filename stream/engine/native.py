"""The compiled engine (Rust, native/ -> stream._native) behind the same interface as the reference engine's
(stream.engine.protocol.Engine).

The core keeps the partition state natively and decodes, dedupes, windows and credits each record in one
pass; the Python reference engine (stream.engine.reference.PartitionEngine) stays the specification, and the tests
run both on the same input and require the same outputs, changes and state. The core calls back into Python only
for what must exist once, through the EngineHooks (stream.engine.reference) it is built with: the Python decoder
for records it is not certain about (so reject reasons and their wording are msgspec's), dead letters and notice
money. The wording of the rejects the core decides itself is stream.engine.model's (EVENT_REJECTIONS, handed to
it here): it gives back only their parameters.

`make_engine` picks the engine: "native" (the default when the extension is built, as `make install`
does), "python", or "auto" (native if importable, else Python).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, MutableMapping, Sequence

import msgspec

from stream.config import ENGINES
from stream.engine import model, order
from stream.engine.model import AccountClosed, CreatorAccount, LateGift, MissedWindow, Payout, WindowTotal
from stream.engine.policy import Policy
from stream.engine.protocol import Changelog, ChunkStarts, Engine, Outputs, PricedIn, StateCounts, StateSizes
from stream.engine.reference import EngineEdges, EngineHooks, PartitionEngine
from stream.state.tables import Account, CreatorState, PartitionState, Streak, creator_fields

try:
    from stream import _native
except ImportError:  # not built (no Rust toolchain at install time)
    _native = None

log = logging.getLogger(__name__)


def native_available() -> bool:
    return _native is not None


def split_gifts(raws: list[bytes], partitions: int, policy: Policy,
                fallback: Callable[[bytes], tuple[bytes | None, int]],
                engines: Sequence[Engine] = ()) -> list[tuple[list[bytes], list[int]]] | None:
    """The gift records of a session split by partition, with their merge times (stream._native.split_gifts); None
    when the compiled module is not built. fallback(raw) -> (key or None, merge time) decides each record the native
    decoder does not take as a valid gift. engines: the partitions' (engines[p] for partition p); when they are
    compiled ones, each keeps what was decoded of its share for its `process` (Engine.gift_times)."""
    if _native is None:
        return None
    cores = [e._core for e in engines if isinstance(e, NativePartitionEngine)]
    return _native.split_gifts(raws, partitions, policy.max_record_bytes, model.MAX_JSON_DEPTH, fallback,
                               cores if cores and len(cores) == len(engines) == partitions else None)


class _NativeOwners(dict):
    """creator_id -> owning partition, by the compiled core's murmur2 (the payout loop asks it in Python)."""

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.partitions = partitions

    def __missing__(self, creator_id: str) -> int:
        return _native.partition_for(creator_id.encode(), self.partitions)


class NativePartitionEngine(EngineEdges):
    """Processes the event sequence of one input partition, in the compiled core."""

    kind = "native"

    def __init__(self, policy: Policy, partition: int = 0, state: PartitionState | None = None,
                 source_topic: str = "gifts", track_changes: bool = True, *, partitions: int = 1) -> None:
        """track_changes=False: nothing is marked for the changelog (an offline replay has none); then
        take_changelog always comes back empty. partitions: of the input topics (a record whose creator_id
        does not hash to `partition` is a dead letter)."""
        if _native is None:
            raise RuntimeError("the native engine is not built: run `make install` (needs Rust) or use "
                               "engine = \"python\"")
        self._check_partition(partition, partitions)
        self.policy = policy
        self.partition = partition
        self.partitions = partitions
        self._owners = _NativeOwners(partitions)
        self.hooks = EngineHooks(policy, partition, source_topic)
        statuses = list(policy.statuses)
        self._core = _native.Core(
            # per region: its rate, min age and the threshold of each status (policy.threshold_milli, as the
            # reference engine's table of them)
            [(r, p.milli_diamonds_per_coin, p.min_age, [policy.threshold_milli(r, s) for s in statuses])
             for r, p in policy.regions.items()],
            [(w.name, w.size_ms, w.hop_ms) for w in policy.windows],
            policy.pane_ms, policy.grace_ms, policy.streak_timeout_ms, policy.dedupe_horizon_ms,
            policy.max_future_ms, policy.max_record_bytes, policy.version, (WindowTotal, LateGift, MissedWindow),
            track_changes, statuses=statuses, missing_status=policy.missing_status,
            default_region=policy.default_region, max_json_depth=model.MAX_JSON_DEPTH, partition=partition,
            partitions=partitions, rejects=model.EVENT_REJECTIONS, hooks=self.hooks)
        self.hooks.attach(self)  # the notices' status and payout method
        if state is not None:
            self._load(state)

    # ---------------------------------------------------------------- batches

    def gift_times(self, values: list[bytes | None], lo: int) -> list[int]:
        return self._core.gift_times(values, lo, order.gift_time)

    def process(self, raws: list[bytes], offsets: list[int] | int | None = None,
                out: Outputs | None = None) -> Outputs:
        """Process one batch of raw records of this partition (in offset order). offsets: one per record,
        or (an offline replay) the offset of the first of consecutive records."""
        out = out if out is not None else Outputs()
        self._core.process(raws if type(raws) is list else list(raws), offsets, out)
        return out

    @staticmethod
    def process_routed(engines: Sequence[NativePartitionEngine], raws: list[bytes], offsets: list[int] | int | None,
                       out: Outputs) -> None:
        """One batch for every partition's engine (see stream.engine.protocol.Engine.process_routed), routed and
        decoded in the compiled core."""
        EngineEdges._check_routed(engines)
        _native.process_routed([e._core for e in engines], raws, offsets, out)

    def _apply_payout(self, p: Payout, out: Outputs) -> int | None:
        result = self._core.apply_payout(p.payout_id, p.creator_id, p.milli_diamonds, out)
        return result if type(result) is int else None  # "applied" / "duplicate" otherwise

    def _apply_account(self, a: CreatorAccount | AccountClosed, out: Outputs) -> None:
        if type(a) is AccountClosed:
            self._core.close_account(a.creator_id, a.ts, out)
        else:
            self._core.apply_account(a.creator_id, a.region, a.account_status, a.payout_method, a.age, a.updated_ts,
                                     out)

    def account(self, creator_id: str) -> Account | None:
        found = self._core.account(creator_id)
        return None if found is None else Account(*found)

    def end_of_stream(self, out: Outputs) -> None:
        self._core.end_of_stream(out)

    # ---------------------------------------------------------------- state

    def take_changelog(self) -> Changelog:
        """The changelog records of the changed keys, encoded natively (see stream.state.changelog.encode_changes)."""
        return self._core.take_changelog()

    def take_changelog_batches(self, max_bytes: int, transactional: bool,
                               timestamp_ms: int) -> tuple[list, list[tuple[int, int]], list[int]]:
        """take_changelog() written straight into Kafka record batches (stream._native.RecordBatchBuilder)."""
        return self._core.take_changelog_batches(max_bytes, transactional, timestamp_ms)

    def clear_changes(self) -> None:
        self._core.clear_changes()

    def adopt(self, restore: _native.ChangelogRestore) -> ChunkStarts:
        """Run on the state a stream._native.ChangelogRestore rebuilt (stream.state.changelog.StateRestore); returns
        each dedupe bucket's chunk starts for the changelog writer. Releases the GIL while it builds."""
        return self._core.adopt(restore)

    def snapshot_body(self, chunks: dict[int, list[int]]) -> bytes:
        """The whole state as a checkpoint body (stream.state.changelog.state_body's format)."""
        return self._core.snapshot(chunks)

    @property
    def watermark(self) -> int | None:
        return self._core.watermark()

    @property
    def close_cursor(self) -> int | None:
        return self._core.close_cursor()

    def creator(self, creator_id: str) -> CreatorState | None:
        found = self._core.creator(creator_id)
        if found is None:
            return None
        fields, panes = found
        return CreatorState(*fields, panes={p: [m, n] for p, m, n in panes})

    def sizes(self) -> StateSizes:
        return StateSizes(*self._core.sizes())

    def counts(self) -> StateCounts:
        return StateCounts(*self._core.counts())

    def priced_in(self) -> PricedIn:
        regions, methods = self._core.priced_in()
        return PricedIn(frozenset(regions), frozenset(methods))

    @property
    def state(self) -> PartitionState:
        """A copy of the whole state (for snapshots, reports and tests; the engine keeps its own)."""
        wm, cursor, creators, streaks, seen_buckets, streak_buckets, payouts, accounts, pane_creators = \
            self._core.export_state()
        st = PartitionState(watermark=wm, close_cursor=cursor)
        for cid, fields, panes in creators:
            st.creators[cid] = CreatorState(*fields, panes={p: [m, n] for p, m, n in sorted(panes)})
        st.streaks = {k: Streak(*s) for k, s in streaks}
        st.seen_buckets = dict(sorted(seen_buckets))
        st.seen = {i for _, ids in seen_buckets for i in ids}
        st.streak_buckets = dict(sorted(streak_buckets))
        st.payouts_seen = set(payouts)
        st.accounts = {cid: Account(*a) for cid, a in sorted(accounts)}
        st.pane_creators = {p: dict.fromkeys(sorted(cids)) for p, cids in sorted(pane_creators)}
        return st

    def _load(self, st: PartitionState) -> None:
        self._core.load_state(
            st.watermark, st.close_cursor,
            [(cid, creator_fields(c),
              [(p, t[0], t[1]) for p, t in c.panes.items()]) for cid, c in st.creators.items()],
            [(k, (s.creator_id, s.region, s.diamond_count, s.count, s.credited, s.last_ts, s.last_event_id, s.open))
             for k, s in st.streaks.items()],
            list(st.seen_buckets.items()), list(st.streak_buckets.items()), list(st.payouts_seen),
            [(cid, msgspec.structs.astuple(a)) for cid, a in st.accounts.items()],
            [(p, list(h)) for p, h in st.pane_creators.items()])


def resolve_kind(kind: str | None = None) -> str:
    """The engine a kind names: "auto" (and None, and GIFTSTREAM_ENGINE when kind is None) picks native when
    it is built."""
    kind = kind or os.environ.get("GIFTSTREAM_ENGINE") or "auto"
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {kind!r}")
    if kind == "auto":
        if _native is None:
            log.warning("native engine not built; using the Python engine (about 5x slower)")
        return "native" if _native is not None else "python"
    return kind


def make_engine(policy: Policy, partition: int = 0, state: PartitionState | None = None,
                source_topic: str = "gifts", kind: str | None = None, track_changes: bool = True, *,
                partitions: int = 1, owners: MutableMapping[str, int] | None = None) -> Engine:
    """An engine of the kind asked for, for `partition` of `partitions` (the input topics' partition count).
    track_changes=False lets the native engine skip the changelog bookkeeping (offline replays); the Python
    engine always keeps it (clear_changes drops it). owners: the Python engine's routing (see PartitionEngine);
    the compiled engine routes by its own murmur2."""
    if resolve_kind(kind) == "native":
        return NativePartitionEngine(policy, partition, state, source_topic, track_changes, partitions=partitions)
    return PartitionEngine(policy, partition, state, source_topic, partitions=partitions, owners=owners)
