"""The engine: a batch of raw gift records in, outputs out. No I/O, no clock, no randomness.

Per partition and per record, in the one order of its inputs (stream.runtime.merge: gifts, payouts and creator
accounts merged by record timestamp); for a gift event:
  1. decode and validate (bad input -> dead letter with a reason code);
  2. bound the event time against the watermark (far future / older than the dedupe horizon -> dead letter);
  3. dedupe by event_id (a duplicate is counted and skipped);
  4. advance the watermark and fire what it makes due, in order: streak timeouts, window closes, expiry;
  5. credit the gift: at once for a plain gift, at the end or timeout of a streak for a streakable one.
A credit adds to the balance and to the pane of its event time, and emits a notice when the balance
crosses the creator's threshold from below (its account's region and status; see stream.engine.policy). A credit
is priced at the rate of its region when it is made (an account's region, else the gift's, else the policy's
default region) and never again; an account record changes the region and threshold from then on, and emits the
notice of a balance already above an eligible account's threshold. A notice out re-arms (the next crossing can
notify) once the lowest balance since it (`low`, lowered only by payouts) is under the threshold in effect when
the threshold is evaluated (at a credit, a payout applied or an account record); while the creator has no
threshold nothing re-arms, and nothing is lost: the check runs again when it has one. Because every decision
depends only on the sequence of the partition's records, the outputs do not depend on how the sequence is cut into
batches.
"""

from __future__ import annotations

import base64
import heapq
import weakref
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field

from stream.engine import model, order
from stream.engine.model import (
    AccountClosed,
    CreatorAccount,
    DeadLetter,
    GiftEvent,
    LateGift,
    MissedWindow,
    Payout,
    PayoutNotice,
    WindowTotal,
)
from stream.engine.policy import CLOSED, Policy, bps_of
from stream.engine.protocol import Changelog, Changes, ChunkStarts, Outputs, PricedIn, StateCounts, StateSizes
from stream.state.changelog import RecordsRestore, encode_changes, record_batches, state_body
from stream.state.changelog_schema import STREAK_KEY_SEP
from stream.state.tables import RETENTION_BUCKET_MS, Account, CreatorState, PartitionState, Streak, creator_fields

STREAKABLE = 1  # gift_type of gifts sent as streaks with cumulative repeat_count


def streak_key(ev: GiftEvent) -> str:
    """The streak an event of a streakable gift belongs to: (room, sender, gift, group), joined by
    changelog_schema.STREAK_KEY_SEP (U+001F). Ids are held to model.ID_PATTERN (no U+001F), so the join is
    unambiguous; the text is the changelog's key (s:<key>),
    the native core's StreakKey text and the timer heap's tie order. An empty group id (the last part) means no
    group: nothing then tells a straggler from a new streak."""
    return STREAK_KEY_SEP.join((ev.room_id, ev.sender_id, str(ev.gift_id), ev.group_id))


@dataclass
class Dirty:
    """Keys changed since the last changelog flush (one changelog record per key per batch)."""

    creators: set[str] = field(default_factory=set)
    panes: set[tuple[str, int]] = field(default_factory=set)
    streaks: set[str] = field(default_factory=set)
    seen_buckets: dict[int, int] = field(default_factory=dict)  # bucket -> its length before this batch
    expired_buckets: set[int] = field(default_factory=set)
    payouts: list[str] = field(default_factory=list)
    accounts: dict[str, None] = field(default_factory=dict)  # an ordered set


def dead_letter(policy: Policy, partition: int, source_topic: str, reason: str, detail: str, raw: bytes,
                offset: int | None) -> DeadLetter:
    keep = policy.max_record_bytes
    if len(raw) > keep:
        # A dead letter must fit in a Kafka message (base64 grows it by a third); the offset points
        # at the full record.
        detail = f"{detail} (raw_b64 holds the first {keep} of {len(raw)} bytes)"
        raw = raw[:keep]
    return DeadLetter(reason=reason, detail=detail, raw_b64=base64.b64encode(raw).decode(),
                      source_topic=source_topic, partition=partition, offset=offset, policy_version=policy.version)


def payout_notice(policy: Policy, creator_id: str, region: str, account: Account | None, crossing_seq: int,
                  balance: int, event_id: str, ts: int) -> PayoutNotice:
    """The notice of a creator's `crossing_seq`-th threshold crossing, with its money in integer cents: the balance's
    value (gross), capped by the daily cap (payable), the platform's service fee on that, the payout method's fee
    on what is left, and the net. event_id "": the account record was the trigger."""
    rp = policy.regions[region]
    status = account.account_status if account is not None else policy.missing_status
    method = account.payout_method if account is not None else rp.payout_method
    gross = rp.value_cents(balance)
    payable = min(gross, rp.daily_cap_cents)
    service_fee = min(payable, bps_of(payable, rp.service_fee_bps))
    method_fee = rp.fees[method].of(payable - service_fee)
    return PayoutNotice(
        notice_id=f"pn-{creator_id}-{crossing_seq}", creator_id=creator_id, region=region, account_status=status,
        payout_method=method, crossing_seq=crossing_seq, balance_milli_diamonds=balance, gross_cents=gross,
        payable_cents=payable, service_fee_bps=rp.service_fee_bps, service_fee_cents=service_fee,
        method_fee_cents=method_fee, net_cents=payable - service_fee - method_fee,
        threshold_cents=rp.thresholds_cents[status], daily_cap_cents=rp.daily_cap_cents, currency="USD",
        policy_version=policy.version, trigger="gift" if event_id else "account",
        trigger_event_id=event_id or None, trigger_ts=ts,
    )


class EngineHooks:
    """Dead letters, notices and the decoder's verdict on one record, in Python, for both engines: the compiled
    core calls these back by name (stream._native.Core checks, when it is built, that each is callable) and the
    reference engine calls them itself, so the wording of rejects, the dead letters and the notices' money
    exist once."""

    def __init__(self, policy: Policy, partition: int, source_topic: str) -> None:
        self.policy = policy
        self.partition = partition
        self.source_topic = source_topic
        self._engine: Callable[[], EngineEdges | None] = lambda: None  # the engine's weak reference (attach)

    def decode_one(self, raw: bytes) -> GiftEvent | tuple[str, str]:
        """A record the native decoder is not certain about: msgspec's event, or its (reason, detail)."""
        return model.decode_events([raw], self.policy.max_record_bytes)[0]

    def reject(self, reason: str, detail: str, raw: bytes, offset: int | None, out: Outputs,
               source_topic: str | None = None) -> None:
        """A dead letter for `raw` (of `source_topic`, by default the gifts topic), and its counter."""
        out.stats[f"rejected.{reason}"] += 1
        out.dead_letters.append(dead_letter(self.policy, self.partition, source_topic or self.source_topic,
                                            reason, detail, raw, offset))

    def attach(self, engine: EngineEdges) -> None:
        """The engine whose accounts the notices read. Held weakly: the compiled core holds these hooks, and a cycle
        through it (an extension object the cyclic GC cannot look into) would never be freed."""
        self._engine = weakref.ref(engine)

    def emit_notice(self, out: Outputs, creator_id: str, region: str, crossing_seq: int, balance: int,
                    event_id: str, ts: int) -> None:
        """The notice of a creator's `crossing_seq`-th threshold crossing (the engine counts it); event_id "": an
        account record made it."""
        engine = self._engine()
        account = engine.account(creator_id) if engine is not None else None
        out.notices.append(payout_notice(self.policy, creator_id, region, account, crossing_seq,
                                         balance, event_id, ts))


class EngineEdges:
    """What both engines do the same way, in Python: partition checks, and the payout loop around each engine's
    own `_apply_payout`."""

    policy: Policy
    partition: int
    partitions: int  # of the input topics (co-partitioned): a record belongs where its creator_id hashes
    hooks: EngineHooks

    @property
    def source_topic(self) -> str:
        return self.hooks.source_topic

    def gift_times(self, values: list[bytes | None], lo: int) -> list[int]:
        return [order.gift_time(v) for v in values[lo:]]

    @staticmethod
    def _check_partition(partition: int, partitions: int) -> None:
        if not 0 <= partition < partitions:
            raise ValueError(f"partition must be in [0, {partitions}) (partitions = {partitions}), not {partition}")

    @staticmethod
    def _check_routed(engines: Sequence[EngineEdges]) -> None:
        """process_routed's engines: one per partition, in partition order."""
        if not engines or any(e.partition != p or e.partitions != len(engines) for p, e in enumerate(engines)):
            raise ValueError("process_routed needs one engine per partition, engines[p] for partition p")

    def _not_ours(self, creator_id: str) -> int | None:
        """The partition that owns creator_id when it is not this one (murmur2, like Kafka's default
        partitioner on the creator_id key), else None."""
        if self.partitions == 1:
            return None
        owner = self._owners[creator_id]
        return owner if owner != self.partition else None

    def apply_payouts(self, payouts: list[Payout | tuple[str, str]], raws: list[bytes],
                      offsets: list[int] | None, out: Outputs, source_topic: str = "payouts") -> None:
        """Payouts made by the payment system: idempotent by payout_id; each lowers the balance (and the lowest
        balance since the last notice), which may re-arm the threshold."""
        for i, p in enumerate(payouts):
            offset = offsets[i] if offsets else None
            if type(p) is tuple:
                self.hooks.reject(p[0], p[1], raws[i], offset, out, source_topic)
                continue
            owner = self._not_ours(p.creator_id)
            if owner is not None:  # the balance it would lower lives on the owner's partition
                self.hooks.reject(*model.PAYOUT_WRONG_PARTITION.of(
                    payout_id=p.payout_id, creator_id=p.creator_id, owner=owner, partitions=self.partitions,
                    partition=self.partition), raws[i], offset, out, source_topic)
                continue
            balance = self._apply_payout(p, out)
            if balance is not None:
                self.hooks.reject(*model.PAYOUT_OVER_BALANCE.of(
                    payout_id=p.payout_id, milli_diamonds=p.milli_diamonds, balance=balance),
                    raws[i], offset, out, source_topic)

    def _apply_payout(self, p: Payout, out: Outputs) -> int | None:
        """Apply one payout (a repeated one only counts); the balance it exceeds when it cannot apply."""
        raise NotImplementedError

    def apply_accounts(self, accounts: list[CreatorAccount | AccountClosed | tuple[str, str]], raws: list[bytes | None],
                       offsets: list[int] | None, out: Outputs, source_topic: str = "creator-accounts") -> None:
        """Creator account records (model.decode_account's results): validated against the policy here, then
        each engine's `_apply_account`."""
        policy = self.policy
        for i, a in enumerate(accounts):
            offset = offsets[i] if offsets else None
            raw = raws[i] if raws[i] is not None else b""
            if type(a) is tuple:
                self.hooks.reject(a[0], a[1], raw, offset, out, source_topic)
                continue
            owner = self._not_ours(a.creator_id)
            rejected = None
            if owner is not None:
                rejected = model.ACCOUNT_WRONG_PARTITION.of(creator_id=a.creator_id, owner=owner,
                                                            partitions=self.partitions, partition=self.partition)
            elif type(a) is CreatorAccount:
                rp = policy.regions.get(a.region)
                if rp is None:
                    rejected = model.ACCOUNT_UNKNOWN_REGION.of(creator_id=a.creator_id, region=a.region,
                                                               policy_version=policy.version)
                elif a.account_status not in policy.statuses:
                    rejected = model.ACCOUNT_UNKNOWN_STATUS.of(creator_id=a.creator_id, status=a.account_status,
                                                               policy_version=policy.version)
                elif a.payout_method not in rp.fees:
                    rejected = model.ACCOUNT_UNKNOWN_METHOD.of(creator_id=a.creator_id, method=a.payout_method,
                                                               region=a.region, policy_version=policy.version)
            if rejected is not None:
                self.hooks.reject(*rejected, raw, offset, out, source_topic)
                continue
            out.stats["accounts_closed" if type(a) is AccountClosed else "accounts"] += 1
            self._apply_account(a, out)

    def _apply_account(self, a: CreatorAccount | AccountClosed, out: Outputs) -> None:
        """Apply one valid account record (or the closing of one)."""
        raise NotImplementedError


class PartitionEngine(EngineEdges):
    """Processes the event sequence of one input partition. This is the reference engine, in Python; the
    compiled one (stream.engine.native) makes the same decisions and the tests hold it to this one."""

    def __init__(self, policy: Policy, partition: int = 0, state: PartitionState | None = None,
                 source_topic: str = "gifts", *, partitions: int = 1, owners: MutableMapping[str, int] | None = None
                 ) -> None:
        """owners: creator_id -> owning partition (stream.kafka.routing.PartitionCache), asked for creators
        with no state here yet (those with state were credited here, so they are ours); needed when
        partitions > 1. Routing is Kafka's partitioner, not the engine's: the caller brings it."""
        self._check_partition(partition, partitions)
        if partitions > 1 and owners is None:
            raise ValueError(f"an engine for one of {partitions} partitions needs owners (creator_id -> partition)")
        self.policy = policy
        self.partition = partition
        self.partitions = partitions
        self._owners: MutableMapping[str, int] = owners if owners is not None else {}
        self.hooks = EngineHooks(policy, partition, source_topic)
        self.state = state if state is not None else PartitionState()
        self.dirty = Dirty()
        self.hooks.attach(self)
        self._rates = {r: p.milli_diamonds_per_coin for r, p in policy.regions.items()}
        # (region, status) -> threshold (None: no notice), and the thresholds of creators without an account
        self._thresholds = {(r, s): policy.threshold_milli(r, s) for r in policy.regions for s in policy.statuses}
        self._missing = {r: self._thresholds[r, policy.missing_status] for r in policy.regions}
        self._min_age = {r: p.min_age for r, p in policy.regions.items()}
        self._default_region = policy.default_region
        self._pane = policy.pane_ms
        self._grace = policy.grace_ms
        self._timeout = policy.streak_timeout_ms
        self._horizon = policy.dedupe_horizon_ms
        self._future = policy.max_future_ms
        self._rebuild_timers()

    # ---------------------------------------------------------------- timers (derived state)

    def _rebuild_timers(self) -> None:
        st = self.state
        self._heap = [(s.last_ts + self._timeout, k) for k, s in st.streaks.items() if s.open]
        heapq.heapify(self._heap)
        self._min_bucket = self._smallest_bucket()
        self._next_timer = self._compute_next_timer()

    def _smallest_bucket(self) -> int | None:
        """Oldest retention bucket of dedupe ids or closed streaks. Kept in self._min_bucket (updated where
        a bucket is added, recomputed when buckets expire) because timers fire about once per streak and a
        scan of all buckets each time was a large share of the engine's time."""
        st = self.state
        buckets = [*st.seen_buckets, *st.streak_buckets]
        return min(buckets) if buckets else None

    def _compute_next_timer(self) -> int:
        st = self.state
        if st.watermark is None:
            return -1
        nxt = st.close_cursor + self._pane + self._grace
        if self._heap:
            nxt = min(nxt, self._heap[0][0])
        if self._min_bucket is not None:
            nxt = min(nxt, self._min_bucket + RETENTION_BUCKET_MS + self._horizon)
        return nxt

    # ---------------------------------------------------------------- gifts

    def process(self, raws: list[bytes], offsets: list[int] | int | None = None,
                out: Outputs | None = None) -> Outputs:
        """Process one batch of raw records of this partition (in offset order). offsets: one per record,
        or the offset of the first of consecutive records."""
        out = out if out is not None else Outputs()
        if isinstance(offsets, int):
            offsets = list(range(offsets, offsets + len(raws)))
        self.process_decoded(model.decode_events(raws, self.policy.max_record_bytes), raws, offsets, out)
        return out

    @staticmethod
    def process_routed(engines: Sequence[PartitionEngine], raws: list[bytes], offsets: list[int] | int | None,
                       out: Outputs) -> None:
        """One batch for every partition's engine (see stream.engine.protocol.Engine.process_routed): decoded
        once, split by the creators' partitions (the engines' owners), each share processed in batch order."""
        EngineEdges._check_routed(engines)
        decoded = model.decode_events(raws, engines[0].policy.max_record_bytes)
        owners = engines[0]._owners
        shares: list[list[int]] = [[] for _ in engines]
        for i, ev in enumerate(decoded):
            shares[owners[ev.creator_id] if type(ev) is GiftEvent and len(engines) > 1 else 0].append(i)
        if isinstance(offsets, int):
            offsets = list(range(offsets, offsets + len(raws)))
        for engine, idx in zip(engines, shares, strict=True):
            if idx:
                engine.process_decoded([decoded[i] for i in idx], [raws[i] for i in idx],
                                       [offsets[i] for i in idx] if offsets else None, out)

    def process_decoded(self, decoded: list[GiftEvent | tuple[str, str]], raws: list[bytes],
                        offsets: list[int] | None, out: Outputs) -> None:
        """Process one batch of this partition's records, decoded (model.decode_events: the event, or the reason
        and detail of a bad record), with their raw bytes and offsets (for dead letters), in offset order."""
        out.stats["events_in"] += len(decoded)
        self._bound_owners()
        for i, ev in enumerate(decoded):
            rejected = ev if isinstance(ev, tuple) else self._rejected(ev)
            if rejected is not None:
                reason, detail = rejected
                self.hooks.reject(reason, detail, raws[i], offsets[i] if offsets else None, out)
            elif not self._first_sighting(ev):
                out.stats["duplicates"] += 1
            else:
                self._advance_watermark(ev.ts, out)
                region = self._credit_region(ev, out)
                if ev.gift_type == STREAKABLE:
                    self._streak_event(ev, region, out)
                else:
                    self._credit_plain(ev, region, out)

    def _bound_owners(self) -> None:
        """The owners map is a cache (stream.kafka.routing.PartitionCache), filled by every creator it is asked
        for: keep it bounded."""
        if len(self._owners) > 100_000:
            self._owners.clear()

    def _rejected(self, ev: GiftEvent) -> tuple[str, str] | None:
        """Why an event that decoded cannot be processed here (reason, detail), or None: its creator belongs to
        another partition, the policy does not know its region (the gift's, or its creator's account's), or its time
        is out of the watermark's bounds."""
        if ev.creator_id not in self.state.creators:  # a creator with state here was credited here: ours
            owner = self._not_ours(ev.creator_id)
            if owner is not None:
                return model.EVENT_REJECTIONS.wrong_partition.of(
                    creator_id=ev.creator_id, owner=owner, partitions=self.partitions, partition=self.partition)
        home = self._account_region(ev.creator_id)
        if ev.region:
            if ev.region not in self._rates:
                return model.EVENT_REJECTIONS.unknown_region.of(region=ev.region, policy_version=self.policy.version)
        elif self._default_region is None and not home:
            return model.EVENT_REJECTIONS.no_region.of(creator_id=ev.creator_id, policy_version=self.policy.version)
        if home and home not in self._rates:  # an account restored under an older policy: no price for its gifts
            return model.EVENT_REJECTIONS.account_region.of(creator_id=ev.creator_id, region=home,
                                                            policy_version=self.policy.version)
        wm = self.state.watermark
        if wm is not None and ev.ts > wm + self._future:
            return model.EVENT_REJECTIONS.too_far_future.of(ts=ev.ts, max_future_ms=self._future, watermark=wm)
        if wm is not None and ev.ts < wm - self._horizon:
            return model.EVENT_REJECTIONS.too_old.of(ts=ev.ts, dedupe_horizon_ms=self._horizon, watermark=wm)
        return None

    def _account_region(self, creator_id: str) -> str:
        """The region of the creator's account ("" without one, or for one closed before it had a region)."""
        account = self.state.accounts.get(creator_id)
        return account.region if account is not None else ""

    def _credit_region(self, ev: GiftEvent, out: Outputs) -> str:
        """The region an accepted gift is priced in: its creator's account's, else its own, else the policy's
        default region. Gifts of creators without an account record are counted."""
        account = self.state.accounts.get(ev.creator_id)
        if account is None:
            out.stats["gifts_without_account"] += 1
        elif account.region:
            return account.region
        return ev.region or self._default_region

    def _first_sighting(self, ev: GiftEvent) -> bool:
        """Dedupe: False when the event id was seen already (inside the dedupe horizon); else remember it, in the
        retention bucket of its event time (expiry forgets a bucket at a time), and True."""
        st = self.state
        if ev.event_id in st.seen:
            return False
        st.seen.add(ev.event_id)
        bucket = ev.ts - ev.ts % RETENTION_BUCKET_MS
        ids = st.seen_buckets.get(bucket)
        if ids is None:
            st.seen_buckets[bucket] = ids = []
            if self._min_bucket is None or bucket < self._min_bucket:
                self._min_bucket = bucket
        self.dirty.seen_buckets.setdefault(bucket, len(ids))  # the changelog writes the ids from there on
        ids.append(ev.event_id)
        return True

    def _advance_watermark(self, ts: int, out: Outputs) -> None:
        """An accepted event at ts: the watermark is the highest accepted event time; moving it fires what it
        makes due (streak timeouts, window closes, expiry)."""
        st = self.state
        if st.watermark is None:
            self._start(ts)
        elif ts > st.watermark:
            st.watermark = ts
            if ts >= self._next_timer:
                self._fire_timers(ts, out)

    def _credit_plain(self, ev: GiftEvent, region: str, out: Outputs) -> None:
        """A gift that is not a streak: credited at once, diamond_count x repeat_count coins at its region's rate."""
        milli = ev.diamond_count * ev.repeat_count * self._rates[region]
        self._credit(ev.creator_id, region, milli, ev.ts, ev.event_id, out)

    def _start(self, ts: int) -> None:
        """First accepted event of the partition: windows ending before it (plus grace) are closed."""
        st = self.state
        st.watermark = ts
        cut = ts - self._grace
        st.close_cursor = cut - cut % self._pane
        self._next_timer = self._compute_next_timer()

    # ---------------------------------------------------------------- streaks

    def _streak_event(self, ev: GiftEvent, region: str, out: Outputs) -> None:
        """An event of a streakable gift: it starts, continues or ends its streak, or is a straggler of a closed one.
        A new streak is priced in `region` (the credit region now) when it is credited."""
        st = self.state
        key = streak_key(ev)
        s = st.streaks.get(key)
        count = ev.repeat_count
        if s is not None and s.open and not ev.group_id and count < s.count:
            # Without a group id a lower cumulative count can only mean a new streak began.
            self._close_streak(key, s, s.last_ts, s.last_event_id, out)
            s = None
        if s is None:
            s = Streak(ev.creator_id, region, ev.diamond_count, count, 0, ev.ts, ev.event_id)
            st.streaks[key] = s
            self.dirty.streaks.add(key)
            out.stats["streaks"] += 1
            if ev.repeat_end:
                self._close_streak(key, s, ev.ts, ev.event_id, out)
            else:
                deadline = ev.ts + self._timeout
                heapq.heappush(self._heap, (deadline, key))
                if deadline < self._next_timer:
                    self._next_timer = deadline
            return
        self.dirty.streaks.add(key)
        if s.open:
            if count > s.count:
                s.count = count
            if ev.ts >= s.last_ts:
                s.last_ts, s.last_event_id = ev.ts, ev.event_id
            if ev.repeat_end:
                self._close_streak(key, s, s.last_ts, ev.event_id, out)
        elif count > s.credited:
            # A straggler with a higher count after a timeout (or the real end arriving late): credit the rest.
            s.count = count
            s.last_ts = max(s.last_ts, ev.ts)
            self._close_streak(key, s, ev.ts, ev.event_id, out)
        else:
            out.stats["streak_stragglers"] += 1

    def _close_streak(self, key: str, s: Streak, ts: int, event_id: str, out: Outputs) -> None:
        st = self.state
        rate = self._rates[s.region]
        delta = s.count - s.credited
        s.credited = s.count
        s.open = False
        self.dirty.streaks.add(key)
        if delta:
            self._credit(s.creator_id, s.region, s.diamond_count * delta * rate, ts, event_id, out)
        if key.endswith(STREAK_KEY_SEP):  # no group id: nothing can tell a straggler from a new streak
            del st.streaks[key]
        else:
            bucket = s.last_ts - s.last_ts % RETENTION_BUCKET_MS
            keys = st.streak_buckets.get(bucket)
            if keys is None:
                st.streak_buckets[bucket] = keys = []
                self._next_timer = min(self._next_timer, bucket + RETENTION_BUCKET_MS + self._horizon)
                if self._min_bucket is None or bucket < self._min_bucket:
                    self._min_bucket = bucket
            keys.append(key)

    # ---------------------------------------------------------------- credits and notices

    def _credit(self, creator_id: str, region: str, milli: int, ts: int, event_id: str, out: Outputs) -> None:
        """Credit `milli` (priced in `region`) to the creator. The creator's own region is its account's when it has
        one with a region, else the region of its latest credit: its notices and threshold follow it."""
        st = self.state
        home = self._account_region(creator_id) or region
        c = st.creators.get(creator_id)
        if c is None:
            st.creators[creator_id] = c = CreatorState(home)
        elif c.region != home:
            c.region = home  # the creator's payout region moved: its threshold applies from now on
        self.dirty.creators.add(creator_id)
        c.balance += milli
        c.credited += milli
        pane = ts - ts % self._pane
        if pane + self._pane > st.close_cursor:
            self._add_to_pane(c, creator_id, pane, milli)
        else:
            self._late_credit(c, creator_id, pane, milli, ts, event_id, out)
        out.stats["credits"] += 1
        out.stats["milli_diamonds"] += milli
        threshold = self._threshold(creator_id, c)
        if threshold is not None:
            if c.above and c.low < threshold:
                c.above = False  # re-armed (the creator is marked changed above)
            if not c.above and c.balance >= threshold:
                self._notice(c, creator_id, event_id, ts, out)

    def _threshold(self, creator_id: str, c: CreatorState) -> int | None:
        """The creator's threshold now (None: no notice while so): its account's region, status and age, or the
        missing status's threshold in its region when it has no account record. Evaluated only where a notice
        could go or a notice out could re-arm: a credit, a payout applied, an account record."""
        account = self.state.accounts.get(creator_id)
        if account is None:
            return self._missing.get(c.region)
        if account.account_status == CLOSED:
            return None
        # A region or status the policy does not have (an account restored under an older policy): no threshold.
        min_age = self._min_age.get(c.region)
        if min_age is None or account.age < min_age:
            return None
        return self._thresholds.get((c.region, account.account_status))

    def _add_to_pane(self, c: CreatorState, creator_id: str, pane: int, milli: int) -> None:
        self.dirty.panes.add((creator_id, pane))
        tally = c.panes.get(pane)
        if tally is None:
            c.panes[pane] = [milli, 1]
            holders = self.state.pane_creators.get(pane)
            if holders is None:
                self.state.pane_creators[pane] = holders = {}
            holders[creator_id] = None
        else:
            tally[0] += milli
            tally[1] += 1

    def _late_credit(self, c: CreatorState, creator_id: str, pane: int, milli: int, ts: int,
                     event_id: str, out: Outputs) -> None:
        """Some window holding ts is already closed: the balance still gets the money, the closed
        windows do not (their totals are final), and the gift is reported on gifts-late."""
        cursor = self.state.close_cursor
        missed = [MissedWindow(w.name, start, start + w.size_ms)
                  for w in self.policy.windows for start in self._window_starts(w.size_ms, w.hop_ms, ts)
                  if start + w.size_ms <= cursor]
        if self._pane_needed_until(pane) > cursor:
            self._add_to_pane(c, creator_id, pane, milli)
        out.stats["late"] += 1
        out.late.append(LateGift(event_id, creator_id, ts, self.state.watermark, milli, missed))

    @staticmethod
    def _window_starts(size: int, hop: int, ts: int) -> range:
        last = ts - ts % hop
        return range(last - size + hop, last + 1, hop)

    def _pane_needed_until(self, pane: int) -> int:
        """End of the last window that holds this pane."""
        return max(pane - pane % w.hop_ms + w.size_ms for w in self.policy.windows)

    def _notice(self, c: CreatorState, creator_id: str, event_id: str, ts: int, out: Outputs) -> None:
        c.crossings += 1
        c.above = True
        c.low = c.balance
        out.stats["notices"] += 1
        self.hooks.emit_notice(out, creator_id, c.region, c.crossings, c.balance, event_id, ts)

    # ---------------------------------------------------------------- timers

    def _fire_timers(self, wm: int, out: Outputs) -> None:
        st = self.state
        heap = self._heap
        while heap and heap[0][0] <= wm:
            deadline, key = heapq.heappop(heap)
            s = st.streaks.get(key)
            if s is None or not s.open:
                continue
            real = s.last_ts + self._timeout
            if real != deadline:  # the streak moved on since this entry was pushed
                heapq.heappush(heap, (real, key))
                continue
            out.stats["streak_timeouts"] += 1
            self._close_streak(key, s, s.last_ts, s.last_event_id, out)
        target = wm - self._grace
        while st.close_cursor + self._pane <= target:
            st.close_cursor += self._pane
            self._close_windows(st.close_cursor, out)
        self._expire(wm)
        self._next_timer = self._compute_next_timer()

    def _close_windows(self, end: int, out: Outputs) -> None:
        st = self.state
        pane_ms = self._pane
        for w in self.policy.windows:
            if end % w.hop_ms:
                continue
            start = end - w.size_ms
            holders: set[str] = set()
            for pane in range(start, end, pane_ms):
                holders.update(st.pane_creators.get(pane, ()))
            for creator_id in sorted(holders):
                panes = st.creators[creator_id].panes
                milli = credits = 0
                for pane in range(start, end, pane_ms):
                    tally = panes.get(pane)
                    if tally is not None:
                        milli += tally[0]
                        credits += tally[1]
                out.stats["window_totals"] += 1
                out.window_totals.append(WindowTotal(creator_id, w.name, start, end, milli, credits,
                                                     self.policy.version))
        for pane in [p for p in st.pane_creators if self._pane_needed_until(p) <= end]:
            for creator_id in st.pane_creators.pop(pane):
                del st.creators[creator_id].panes[pane]
                self.dirty.panes.add((creator_id, pane))

    def _expire(self, wm: int) -> None:
        """Forget event ids and closed streaks older than the dedupe horizon: events that old are now
        rejected as ts_too_old, so nothing they could match can be accepted again."""
        st = self.state
        cutoff = wm - self._horizon
        if self._min_bucket is None or self._min_bucket + RETENTION_BUCKET_MS > cutoff:
            return  # even the oldest bucket is still inside the horizon
        for bucket in [b for b in st.seen_buckets if b + RETENTION_BUCKET_MS <= cutoff]:
            st.seen.difference_update(st.seen_buckets.pop(bucket))
            self.dirty.expired_buckets.add(bucket)
            self.dirty.seen_buckets.pop(bucket, None)
        for bucket in [b for b in st.streak_buckets if b + RETENTION_BUCKET_MS <= cutoff]:
            for key in st.streak_buckets.pop(bucket):
                s = st.streaks.get(key)
                # A straggler may have moved the streak to a newer bucket; it expires from that one.
                if s is not None and not s.open and s.last_ts - s.last_ts % RETENTION_BUCKET_MS == bucket:
                    del st.streaks[key]
                    self.dirty.streaks.add(key)
        self._min_bucket = self._smallest_bucket()

    # ---------------------------------------------------------------- payouts

    def _apply_payout(self, p: Payout, out: Outputs) -> int | None:
        st = self.state
        if p.payout_id in st.payouts_seen:
            out.stats["payout_duplicates"] += 1
            return None
        c = st.creators.get(p.creator_id)
        if c is None or p.milli_diamonds > c.balance:
            return c.balance if c else 0
        st.payouts_seen.add(p.payout_id)
        self.dirty.payouts.append(p.payout_id)
        self.dirty.creators.add(p.creator_id)
        c.balance -= p.milli_diamonds
        c.paid_out += p.milli_diamonds
        if c.balance < c.low:
            c.low = c.balance
        if c.above:
            threshold = self._threshold(p.creator_id, c)
            if threshold is not None and c.low < threshold:
                c.above = False  # re-armed; while there is no threshold a payout only lowers `low`
        out.stats["payouts"] += 1
        return None

    # ---------------------------------------------------------------- accounts

    def _apply_account(self, a: CreatorAccount | AccountClosed, out: Outputs) -> None:
        """The account replaces the creator's (a closing keeps its region, method and age with status CLOSED). The
        creator's region follows it; balances already credited are not re-priced. If the balance is now at or
        above an eligible account's threshold and no notice is out, the notice goes now."""
        st = self.state
        creator_id = a.creator_id
        c = st.creators.get(creator_id)
        if type(a) is AccountClosed:
            prev = st.accounts.get(creator_id)
            if prev is not None:
                account = Account(prev.region, CLOSED, prev.payout_method, prev.age, a.ts)
            else:
                account = Account(c.region if c is not None else "", CLOSED, "", 0, a.ts)
        else:
            account = Account(a.region, a.account_status, a.payout_method, a.age, a.updated_ts)
        st.accounts[creator_id] = account
        self.dirty.accounts[creator_id] = None
        if c is None:
            return
        if account.region and c.region != account.region:
            c.region = account.region
            self.dirty.creators.add(creator_id)
        threshold = self._threshold(creator_id, c)
        if threshold is None:
            return
        if c.above and c.low < threshold:
            c.above = False  # re-armed: the balance was under this threshold since the notice
            self.dirty.creators.add(creator_id)
        if not c.above and c.balance >= threshold:
            self.dirty.creators.add(creator_id)
            self._notice(c, creator_id, "", account.updated_ts, out)

    def account(self, creator_id: str) -> Account | None:
        return self.state.accounts.get(creator_id)

    # ---------------------------------------------------------------- the interface both engines share

    def end_of_stream(self, out: Outputs) -> None:
        """Declare the partition's input finished (end of a recorded session): time out every open streak
        and close every window, as if event time had moved far enough past the last event."""
        st = self.state
        if st.watermark is None:
            return
        policy = self.policy
        horizon = max(policy.streak_timeout_ms, *(w.size_ms for w in policy.windows))
        final = st.watermark + horizon + policy.grace_ms + policy.pane_ms
        st.watermark = final
        self._fire_timers(final, out)

    def take_changes(self) -> Changes:
        """The keys changed since the last call, with their values now; forgets them."""
        st, dirty = self.state, self.dirty
        self.dirty = Dirty()
        creators = st.creators
        changed = []
        for cid in dirty.creators:
            c = creators.get(cid)
            changed.append((cid, None if c is None else creator_fields(c)))
        panes = []
        for cid, pane in dirty.panes:
            c = creators.get(cid)
            tally = c.panes.get(pane) if c is not None else None
            panes.append((cid, pane, None if tally is None else list(tally)))
        chunks = [(bucket, start, st.seen_buckets[bucket][start:]) for bucket, start in dirty.seen_buckets.items()]
        return Changes(st.watermark, st.close_cursor, changed, panes,
                       [(key, st.streaks.get(key)) for key in dirty.streaks],
                       [c for c in chunks if c[2]], list(dirty.expired_buckets), dirty.payouts,
                       [(cid, st.accounts[cid]) for cid in dirty.accounts])

    def take_changelog(self) -> Changelog:
        """take_changes() as changelog records (stream.state.changelog.encode_changes)."""
        return encode_changes(self.take_changes())

    def take_changelog_batches(self, max_bytes: int, transactional: bool,
                               timestamp_ms: int) -> tuple[list, list[tuple[int, int]], list[int]]:
        """take_changelog()'s records in Kafka record batches (stream.state.changelog.record_batches)."""
        records, chunks, expired = self.take_changelog()
        return record_batches(records, max_bytes, transactional, timestamp_ms), chunks, expired

    def clear_changes(self) -> None:
        """Forget the changed keys (an offline replay has no changelog to write them to)."""
        self.dirty = Dirty()

    def snapshot_body(self, chunks: dict[int, list[int]]) -> bytes:
        """The whole state as a checkpoint body (stream.state.changelog.state_body)."""
        return state_body(self.state, chunks)

    def adopt(self, restore: RecordsRestore) -> ChunkStarts:
        """Run on the state the records `restore` gathered rebuild (stream.state.changelog.restore_state)."""
        state, starts = restore.take_state()
        self.state = state
        self.dirty = Dirty()
        self._rebuild_timers()
        return starts

    @property
    def watermark(self) -> int | None:
        return self.state.watermark

    @property
    def close_cursor(self) -> int | None:
        return self.state.close_cursor

    def creator(self, creator_id: str) -> CreatorState | None:
        return self.state.creators.get(creator_id)

    def priced_in(self) -> PricedIn:
        st = self.state
        return PricedIn(frozenset(s.region for s in st.streaks.values() if s.open),
                        frozenset((a.region, a.payout_method) for a in st.accounts.values()
                                  if a.account_status != CLOSED))

    def counts(self) -> StateCounts:
        st = self.state
        return StateCounts(len(st.creators), len(st.streaks), len(st.seen))

    def sizes(self) -> StateSizes:
        st = self.state
        return StateSizes(len(st.creators), len(st.streaks), len(st.seen),
                          sum(len(c.panes) for c in st.creators.values()),
                          sum(s.open for s in st.streaks.values()), sum(c.balance for c in st.creators.values()),
                          len(st.accounts))
