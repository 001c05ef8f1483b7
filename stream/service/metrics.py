"""Prometheus metrics of one worker process (its own registry, so tests can run several workers)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream.engine.model import REJECT_REASONS
from stream.engine.protocol import Outputs
from stream.kafka.aiokafka_patches import reader_end

_BATCH_SIZES = (1, 10, 100, 500, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_in = Counter("giftstream_events_in", "Gift records consumed", registry=r)
        self.rejected = Counter("giftstream_rejected", "Records sent to the dead-letter topic",
                                ["reason"], registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)  # every reason shows up at 0, so rate() works from the start
        self.duplicates = Counter("giftstream_duplicates", "Gift events skipped as duplicates", registry=r)
        self.diamonds = Counter("giftstream_diamonds_credited", "Diamonds credited to creators", registry=r)
        self.notices = Counter("giftstream_notices", "Payout-eligible notices emitted", registry=r)
        self.window_totals = Counter("giftstream_window_totals", "Window totals emitted", registry=r)
        self.late = Counter("giftstream_late_gifts", "Gifts later than the grace period", registry=r)
        self.gifts_without_account = Counter(
            "giftstream_gifts_without_account", "Accepted gift events of creators with no creator-accounts record "
            "(priced in the gift's region, else the policy's default region; the policy's missing status)",
            registry=r)
        self.accounts = Counter("giftstream_account_records", "Creator account records applied, by kind",
                                ["kind"], registry=r)
        self.payouts = Counter("giftstream_payouts_applied", "Payouts applied to balances", registry=r)
        self.batch_size = Histogram("giftstream_batch_size", "Records per partition batch",
                                    buckets=_BATCH_SIZES, registry=r)
        self.batch_seconds = Histogram("giftstream_batch_processing_seconds",
                                       "Engine time per partition batch", buckets=_SECONDS, registry=r)
        self.latency = Histogram("giftstream_end_to_end_latency_seconds",
                                 "From the record's Kafka timestamp to its batch being processed",
                                 buckets=_SECONDS, registry=r)
        self.lag = Gauge("giftstream_consumer_lag", "Records behind the partition end",
                         ["topic", "partition"], registry=r)
        self.restore_seconds = Histogram("giftstream_restore_seconds", "Changelog restore time per partition",
                                         buckets=(*_SECONDS, 30, 60, 120, 300, 600), registry=r)
        self.restoring_partitions = Gauge("giftstream_restoring_partitions",
                                          "Owned partitions not running yet (restoring, or waiting to retry)",
                                          registry=r)
        self.restore_remaining = Gauge("giftstream_restore_remaining_records",
                                       "Changelog records still to read by the restores under way", registry=r)
        self.restores = Counter("giftstream_restores", "Partition restores by where the state came from: kept "
                                "(handed back unchanged), checkpoint (local file + changelog tail), changelog "
                                "(all of it)",
                                ["source"], registry=r)
        self.checkpoints_refused = Counter("giftstream_checkpoints_refused", "Local checkpoints not used, by reason",
                                           ["reason"], registry=r)
        self.checkpoints_written = Counter("giftstream_checkpoints_written", "Local checkpoints written", registry=r)
        self.checkpoint_bytes = Gauge("giftstream_checkpoint_bytes", "Size of the last checkpoint written",
                                      ["partition"], registry=r)
        self.transactions_aborted = Counter("giftstream_transactions_aborted", "Aborted transactions",
                                            registry=r)
        self.state_creators = Gauge("giftstream_state_creators", "Creators held in memory", registry=r)
        self.state_streaks = Gauge("giftstream_state_streaks", "Streaks held in memory", registry=r)
        self.state_dedupe_ids = Gauge("giftstream_state_dedupe_ids", "Event ids held for dedupe", registry=r)
        self.last_poll = Gauge("giftstream_last_poll_timestamp_seconds", "When the consume loop last polled",
                               registry=r)
        self._lag_series: set = set()
        self.partitions = Gauge("giftstream_assigned_partitions", "Input partitions owned", registry=r)

    def record_batch(self, out: Outputs, records: int, seconds: float, timestamps: list[int]) -> None:
        """A processed batch: its counters, size, time, and the end-to-end latency of its first and last
        record (record timestamps in ms)."""
        s = out.stats
        self.events_in.inc(s["events_in"])
        for key, n in s.items():
            if key.startswith("rejected."):
                self.rejected.labels(key[9:]).inc(n)
        self.duplicates.inc(s["duplicates"])
        self.diamonds.inc(s["milli_diamonds"] / 1000)
        self.notices.inc(s["notices"])
        self.window_totals.inc(s["window_totals"])
        self.late.inc(s["late"])
        self.gifts_without_account.inc(s["gifts_without_account"])
        self.accounts.labels("update").inc(s["accounts"])
        self.accounts.labels("closed").inc(s["accounts_closed"])
        self.payouts.inc(s["payouts"])
        self.batch_size.observe(records)
        self.batch_seconds.observe(seconds)
        if timestamps:
            now_ms = time.time() * 1000
            for ts in (timestamps[0], timestamps[-1]):
                if ts and ts > 0:
                    self.latency.observe(max(0.0, (now_ms - ts) / 1000))

    async def observe_lag(self, consumer: Any, partitions: Iterable[Any]) -> dict[Any, int]:
        """Set and return the lag of each given partition: records a read_committed reader can reach past the
        consumer's position. Partitions not given (moved away, or restoring: no position yet) lose their
        series."""
        tps = set(partitions)
        for tp in self._lag_series - tps:
            self.lag.remove(tp.topic, str(tp.partition))
        self._lag_series = tps
        lags = {}
        for tp in tps:
            end = reader_end(consumer.last_stable_offset(tp), consumer.highwater(tp))
            if end is not None:
                lags[tp] = lag = max(0, end - await consumer.position(tp))
                self.lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.last_poll.set_to_current_time()
        return lags

    def set_state_size(self, tasks: dict) -> None:
        """The state-size gauges, from each engine's counts (O(1): set after every batch)."""
        counts = [t.engine.counts() for t in tasks.values()]
        self.state_creators.set(sum(c.creators for c in counts))
        self.state_streaks.set(sum(c.streaks for c in counts))
        self.state_dedupe_ids.set(sum(c.dedupe_ids for c in counts))
        self.partitions.set(len(counts))
