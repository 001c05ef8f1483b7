"""What a LIVE client's gift message becomes in giftstream's contract (schemas/gift-event.schema.json): the one
owner of the mapping rules both clients share. Each client module reads its own shape (TikTokLive's GiftEvent,
TikTok-Live-Connector's saved gift objects) into a `LiveGift`; `gift_event` turns it into the record's bytes or
says why it cannot (`Unmappable`), so nothing is dropped silently.

The rules (README, "Sessions from LIVE clients"):
- ids stay exact decimal strings (they are 64-bit; a float would round them); an id of 0 or "" is absent (0 is
  protobuf's default for an int64 field the message does not carry), never the id "0";
- the event id is the message's msg_id: a resend of the same message is the same event, deduplicated;
- the creator is the user the gift is sent to (a co-host's gifts are the co-host's), the room's owner when the
  message names nobody;
- streakable when the gift's type is 1; repeat_count is cumulative within a streak and repeat_end marks its last
  event; a non-streakable gift is one event with repeat_end false;
- diamond_count is the gift's coin price per unit from its details: giftstream keeps coins as integers (a client's
  `repeat_count * diamond_count * 0.005` is a float);
- the event time is the message's create time, in epoch milliseconds;
- group_id is the streak's group id (empty when the message has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stream.engine import model

STREAKABLE = 1  # TikTok's gift type of a streakable gift
_ID = re.compile(model.ID_PATTERN)


class Unmappable(ValueError):
    """A client's record that cannot become a gift event; its message is the reason."""


@dataclass(frozen=True, slots=True)
class LiveGift:
    """The facts of one gift message, as a client gives them (ints or decimal strings for 64-bit ids)."""

    msg_id: int | str
    room_id: int | str
    receiver_id: int | str  # the user the gift is sent to; 0 or "" when the message names nobody
    host_id: int | str  # the room's owner; 0 or "" when unknown
    sender_id: int | str
    gift_id: int
    gift_type: int
    diamond_count: int
    repeat_count: int
    repeat_end: bool
    group_id: int | str
    create_time_ms: int


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A record that could not be mapped: where it was (file and line, or the capture's message count) and why."""

    where: str
    reason: str


def _id(value: int | str, name: str, optional: bool = False) -> str:
    text = str(value) if not isinstance(value, bool) else ""
    if text in ("", "0"):  # 0 is protobuf's default: an int64 id field the message does not carry
        if optional:
            return ""
        raise Unmappable(f"no {name}: the message carries none (empty or 0)")
    if not _ID.match(text):
        raise Unmappable(f"{name} {value!r} is not an id of 1 to 64 of [0-9A-Za-z_-]")
    return text


def gift_event(g: LiveGift) -> bytes:
    """The gift event record of a gift message (compact JSON, the contract's field names), or Unmappable."""
    creator = _id(g.receiver_id, "receiver", optional=True) or _id(g.host_id, "room owner", optional=True)
    if not creator:
        raise Unmappable("no receiving user: the message names none and the room's owner is unknown")
    streakable = g.gift_type == STREAKABLE
    if not 1 <= g.diamond_count <= 10_000_000:
        raise Unmappable(f"diamond_count {g.diamond_count} is outside 1..10,000,000 coins")
    if not 1 <= g.repeat_count <= 1_000_000:
        raise Unmappable(f"repeat_count {g.repeat_count} is outside 1..1,000,000")
    if not 0 < g.create_time_ms < 100_000_000_000_000:
        raise Unmappable(f"create time {g.create_time_ms} is not epoch milliseconds")
    if not 0 <= g.gift_id < 2**31 or not 0 <= g.gift_type < 2**31:
        raise Unmappable(f"gift id {g.gift_id} or type {g.gift_type} is outside 0..2**31-1")
    event = {
        "event_id": _id(g.msg_id, "msg_id"),
        "room_id": _id(g.room_id, "room_id"),
        "creator_id": creator,
        "sender_id": _id(g.sender_id, "sender"),
        "gift_id": g.gift_id,
        "gift_type": g.gift_type,
        "diamond_count": g.diamond_count,
        "repeat_count": g.repeat_count,
        "repeat_end": bool(g.repeat_end) if streakable else False,
        "ts": g.create_time_ms,
    }
    group = _id(g.group_id, "group_id", optional=True)
    if group:
        event["group_id"] = group
    raw = model.encode(event)
    decoded = model.decode_event(raw)
    if not isinstance(decoded, model.GiftEvent):  # the bounds above are the contract's; this is the engine's word
        raise Unmappable(f"the engine would reject it: {decoded[0]}: {decoded[1]}")
    return raw
