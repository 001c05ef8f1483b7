"""Which partition a keyed record belongs to: Kafka's default partitioner (murmur2 of the key), the same in the
Java client and aiokafka. The gifts, payouts and changelog topics are co-partitioned on creator_id by it."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client and aiokafka alike) picks for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionCache(dict):
    """Key (str or bytes) -> partition, computed on first use: creators repeat a lot, murmur2 in Python is slow."""

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.partitions = partitions

    def __missing__(self, key: str | bytes) -> int:
        p = self[key] = partition_for(key.encode() if isinstance(key, str) else key, self.partitions)
        return p
