"""`giftstream import`: sessions saved by a LIVE client into a giftstream gift session (plain JSONL, as `giftstream
replay FILE` reads). Each client module reads its own saved shape (`read_saved(path)`: a LiveGift per gift
message, an Unmapped per record it cannot read); contract.gift_event makes the records. Nothing is dropped: a
record that cannot be mapped comes back in `Imported.unmapped` with where it was and why."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stream.live_clients.contract import LiveGift, Unmappable, Unmapped, gift_event

# --from NAME -> the module that reads that client's saved sessions.
IMPORTERS = {
    "tiktoklive": "stream.live_clients.tiktoklive",
    "tiktok-live-connector": "stream.live_clients.tiktok_live_connector",
}


class SavedReader(Protocol):
    def __call__(self, path: Path) -> Iterator[LiveGift | Unmapped]: ...


@dataclass
class Imported:
    records: list[bytes] = field(default_factory=list)  # gift event records, in the files' order
    unmapped: list[Unmapped] = field(default_factory=list)


def reader(source: str) -> SavedReader:
    if source not in IMPORTERS:
        raise ValueError(f"import --from: {source!r} is not one of {', '.join(IMPORTERS)}")
    return importlib.import_module(IMPORTERS[source]).read_saved


def map_gifts(items: Iterable[tuple[str, LiveGift | Unmapped]], into: Imported) -> Imported:
    """Each (where, item) into a record or an Unmapped with its reason (where: the file and line, or the item
    number, as the reader counts them: one item per line)."""
    for where, item in items:
        if isinstance(item, Unmapped):
            into.unmapped.append(item)
            continue
        try:
            into.records.append(gift_event(item))
        except Unmappable as e:
            into.unmapped.append(Unmapped(where, str(e)))
    return into


def import_sessions(source: str, paths: Iterable[str | Path]) -> Imported:
    """Every saved file of a client, in order, mapped."""
    read = reader(source)
    out = Imported()
    for path in map(Path, paths):
        map_gifts(((f"{path}:{i}", item) for i, item in enumerate(read(path), 1)), out)
    return out
