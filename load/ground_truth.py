"""An independent, deliberately naive computation of what the engine must produce.

It reads the same records but shares no code with stream.engine.reference: plain dicts, whole-input passes, no
windows machinery, no timers. Used as the ground truth by the engine tests
and by the load harness (`giftstream load run`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from fractions import Fraction

from aiokafka.partitioner import murmur2

# The contract's id pattern (schemas/gift-event.schema.json), written out again here: this module shares no
# code with the engine.
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

FIELDS = {"event_id": str, "room_id": str, "creator_id": str, "sender_id": str, "gift_id": int,
          "gift_type": int, "diamond_count": int, "repeat_count": int, "repeat_end": bool, "ts": int,
          "region": str}


def _valid(rec: object) -> bool:
    if not isinstance(rec, dict):
        return False
    for name, typ in FIELDS.items():
        v = rec.get(name)
        if type(v) is not typ:
            return False
    if not all(_ID.fullmatch(rec[k]) for k in ("event_id", "room_id", "creator_id", "sender_id")):
        return False
    group = rec.get("group_id", "")
    if type(group) is not str or (group and not _ID.fullmatch(group)):
        return False
    return (1 <= rec["diamond_count"] <= 10_000_000 and 1 <= rec["repeat_count"] <= 1_000_000
            and 0 <= rec["gift_id"] < 2**31 and 0 <= rec["gift_type"] < 2**31 and 0 <= rec["ts"] <= 10**14)


def expected(records: list[bytes], rates: dict[str, Fraction], partitions: int, max_future_ms: int,
             horizon_ms: int, max_bytes: int = 65536) -> dict:
    """Balances (milli-diamonds) per creator and credit events (creator, ts, milli) after end of session.

    Accepted = valid, known region, inside [watermark - horizon, watermark + future] of its partition,
    first of its event_id. Plain gifts credit count x price; a streak (room, sender, gift, group) credits
    its highest cumulative count x price once, stamped with the time of its newest event."""
    watermark: dict[int, int] = {}
    seen: set[str] = set()
    accepted = []
    for raw in records:
        if len(raw) > max_bytes:
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not _valid(rec) or rec["region"] not in rates:
            continue
        p = (murmur2(rec["creator_id"].encode()) & 0x7FFFFFFF) % partitions
        wm = watermark.get(p)
        if wm is not None and not (wm - horizon_ms <= rec["ts"] <= wm + max_future_ms):
            continue
        if rec["event_id"] in seen:
            continue
        seen.add(rec["event_id"])
        watermark[p] = rec["ts"] if wm is None else max(wm, rec["ts"])
        accepted.append(rec)
    balances: dict[str, int] = defaultdict(int)
    credits: list[tuple[str, int, int]] = []
    streaks: dict[tuple, dict] = {}
    for rec in accepted:
        milli = int(rates[rec["region"]] * 1000) * rec["diamond_count"]
        if rec["gift_type"] == 1:
            key = (rec["room_id"], rec["sender_id"], rec["gift_id"], rec.get("group_id", ""))
            s = streaks.setdefault(key, {"creator": rec["creator_id"], "milli": milli, "count": 0, "ts": 0})
            s["count"] = max(s["count"], rec["repeat_count"])
            s["ts"] = max(s["ts"], rec["ts"])
        else:
            credits.append((rec["creator_id"], rec["ts"], milli * rec["repeat_count"]))
    for s in streaks.values():
        credits.append((s["creator"], s["ts"], s["milli"] * s["count"]))
    for creator, _, milli in credits:
        balances[creator] += milli
    return {"balances": dict(balances), "credits": credits, "accepted": len(accepted)}


def window_totals(credits: list[tuple[str, int, int]], windows: list[tuple[str, int, int]]) -> dict:
    """(creator, window name, start) -> milli-diamonds, for every window each credit falls in."""
    totals: dict[tuple[str, str, int], int] = defaultdict(int)
    for creator, ts, milli in credits:
        for name, size, hop in windows:
            start = ts - ts % hop
            while start > ts - size:
                totals[(creator, name, start)] += milli
                start -= hop
    return dict(totals)
