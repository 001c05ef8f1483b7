"""TikTok-Live-Connector (npm `tiktok-live-connector` 2.x, Node.js): its saved gift events into giftstream's gift
contract, for `giftstream import --from tiktok-live-connector FILE...`.

What the library gives (tiktok-live-connector 2.5.0 with tiktok-live-proto 0.2.4 and @bufbuild/protobuf 2.x;
paths inside node_modules/):
- tiktok-live-connector/dist/lib-*.js: `WebcastWebSocketClient.onMessage` passes each websocket frame to
  `deserializeWebSocketMessage` (a WebcastPushFrame, its payload unzipped when gzipped, decoded as a
  ProtoMessageFetchResult); `deserializeMessage` decodes each message's payload with the schema named by its
  `method`; `TikTokLiveConnection.processDecodedData` emits a "WebcastGiftMessage" as `gift`
  (`WebcastEvent.GIFT`): the decoded message object itself, unflattened (1.x's `simplifyObject` is gone), plus
  `extendedGiftInfo` when the connection was made with `enableExtendedGiftInfo`.
- tiktok-live-proto/dist/node/v3.js (ts-proto, its types in v3.d.ts): `WebcastGiftMessage` in camelCase:
  `common` (CommonMessageData: `msgId`, `roomId`, `createTime` (epoch ms), `method`), `user.id` (the sender),
  `toUser.id` (the receiver; absent when the message names none), `monitorInfo.anchorId` and `.toUserId` (the
  room's anchor and the receiver), `giftId`, `gift` (the gift's details: `id`, `type` (1 = streakable),
  `diamondCount` (its coin price per unit)), `repeatCount`, `repeatEnd` (a number, 0 or 1), `groupId`.
  Every int64 field is decoded as `reader.int64().toString()`: a decimal string, exact (no Long, no BigInt, no
  JS number), so `JSON.stringify` works and keeps ids exact; int32 fields (repeatCount, repeatEnd, gift.type,
  gift.diamondCount) are JS numbers. An absent int64 field is "0", an absent message field is undefined (left
  out by JSON.stringify); bytes fields are Buffers, `{"type": "Buffer", "data": [...]}` in JSON.

The saved form `import --from tiktok-live-connector` reads: what the library's emitted objects give through
`JSON.stringify`, one per line (JSONL, gzipped when the name ends in .gz): `connection.on(WebcastEvent.GIFT,
(data) => out.write(JSON.stringify(data) + "\\n"))`. Every line is one item: a LiveGift for a gift message, else
an Unmapped with its `file:line` and why (blank, not JSON, another event type such as a chat saved to the same
file, a 1.x flattened object, a gift that lacks what the contract needs). So the n-th item is the n-th line.

An id given as a JSON number (not the library's string) is exact only up to 2**53-1; a larger one was rounded on
its way (e.g. by a program's own Number() or JSON.parse): it is unmappable.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.live_clients.contract import LiveGift, Unmappable, Unmapped

GIFT_METHOD = "WebcastGiftMessage"
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
LOST_PRECISION = "a 64-bit id saved as a JSON number lost its precision"


def read_saved(path: Path) -> Iterator[LiveGift | Unmapped]:
    """One item per line of a saved session: the gift message's facts, or where and why it cannot be read."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                yield _item(raw, f"{path}:{line_no}")
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz: the rest cannot be read
        yield Unmapped(f"{path}:{line_no + 1}", f"the file cannot be read from here on: {e}")


def _item(raw: bytes, where: str) -> LiveGift | Unmapped:
    if not raw.strip():
        return Unmapped(where, "an empty line, not a saved event")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return Unmapped(where, f"not JSON: {e}")
    try:
        return gift_of(data)
    except Unmappable as e:
        return Unmapped(where, str(e))


def gift_of(data: Any) -> LiveGift:
    """The facts of one emitted `gift` object (a decoded WebcastGiftMessage), or Unmappable with the reason."""
    if not isinstance(data, dict):
        raise Unmappable(f"not a saved event: a JSON {type(data).__name__}, not an object")
    common = data.get("common")
    if not isinstance(common, dict):
        if "giftType" in data or "diamondCount" in data or "msgId" in data:
            raise Unmappable("a tiktok-live-connector 1.x gift object (flattened: msgId, giftType, diamondCount at "
                             "its top); this reads 2.x's emitted WebcastGiftMessage (common, gift, toUser)")
        raise Unmappable("not a WebcastGiftMessage: it has no common (CommonMessageData)")
    method = common.get("method") or ""
    if method and method != GIFT_METHOD:
        raise Unmappable(f"a {method}, not a gift message (the gift event is a {GIFT_METHOD})")
    if not method and not ("giftId" in data and "repeatCount" in data):
        raise Unmappable("not a gift message: common.method is empty and it has no giftId and repeatCount")
    details = data.get("gift")
    if not isinstance(details, dict):
        raise Unmappable("no gift details (gift): the gift's type and coin price are unknown")
    monitor = _obj(data, "monitorInfo")
    gift_id = _int64(data.get("giftId"), "giftId") or _int64(details.get("id"), "gift.id")
    return LiveGift(
        msg_id=_required(_int64(common.get("msgId"), "common.msgId"), "common.msgId",
                         "a resend could not be told from a new gift"),
        room_id=_required(_int64(common.get("roomId"), "common.roomId"), "common.roomId", "the room is unknown"),
        receiver_id=_int64(_obj(data, "toUser").get("id"), "toUser.id")
        or _int64(monitor.get("toUserId"), "monitorInfo.toUserId"),
        host_id=_int64(monitor.get("anchorId"), "monitorInfo.anchorId"),
        sender_id=_required(_int64(_obj(data, "user").get("id"), "user.id"), "user.id", "the sender is unknown"),
        gift_id=int(gift_id or 0),
        gift_type=_int32(details.get("type"), "gift.type"),
        diamond_count=_int32(details.get("diamondCount"), "gift.diamondCount"),
        repeat_count=_int32(data.get("repeatCount"), "repeatCount"),
        repeat_end=_repeat_end(data.get("repeatEnd")),
        group_id=_int64(data.get("groupId"), "groupId"),
        create_time_ms=int(_required(_int64(common.get("createTime"), "common.createTime"), "common.createTime",
                                     "the gift's time is unknown")),
    )


def _obj(data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unmappable(f"{key} is a JSON {type(value).__name__}, not an object")
    return value


def _int64(value: Any, name: str) -> str:
    """An int64 field as its exact decimal string ("" when absent or 0, protobuf's default)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        raise Unmappable(f"{name} {value!r} is not an integer")
    if isinstance(value, float):
        if abs(value) > MAX_SAFE_INTEGER:
            raise Unmappable(f"{name} {value!r}: {LOST_PRECISION}")
        if not value.is_integer():
            raise Unmappable(f"{name} {value!r} is not an integer")
        value = int(value)
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise Unmappable(f"{name} {value}: {LOST_PRECISION}")
        value = str(value)
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise Unmappable(f"{name} {value!r} is not a decimal integer")
    value = value.lstrip("0")
    return value


def _required(value: str, name: str, why: str) -> str:
    if not value:
        raise Unmappable(f"no {name}: absent or 0 ({why})")
    return value


def _int32(value: Any, name: str) -> int:
    if value is None:
        return 0  # proto3's default, as the library's decoder gives it; the contract's bounds say what it lacks
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unmappable(f"{name} {value!r} is not an integer")
    return value


def _repeat_end(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):  # not the 2.x decoder's (an int32 number), but its meaning is plain
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    raise Unmappable(f"repeatEnd {value!r} is neither 0 nor 1")
