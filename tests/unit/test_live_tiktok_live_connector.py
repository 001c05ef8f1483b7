"""`giftstream import --from tiktok-live-connector`: a session saved by TikTok-Live-Connector 2.x, made by the real
library without a network (tests/support/tiktok-live-connector/make-session.mjs: its proto encoder, its websocket
message handler, its `gift` event, JSON.stringify per line), imported and replayed to exact credits.

The Node package is installed by `make unit` / `make test` (npm ci into tests/support/tiktok-live-connector); without
node or the package these tests fail, they do not skip."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.cli import main
from stream.engine.policy import load_policy
from stream.kafka.session_files import read_session
from stream.live_clients.contract import LiveGift, Unmapped
from stream.live_clients.tiktok_live_connector import LOST_PRECISION, read_saved
from stream.runtime.replay import replay

FIXTURE = Path(__file__).resolve().parents[1] / "support" / "tiktok-live-connector"
INSTALL = "npm ci --prefix tests/support/tiktok-live-connector --no-audit --no-fund (make unit and make test run it)"

# What make-session.mjs sends, written out by hand (every id above 2**53).
ROOM = "7301234567890123457"
HOST = "7101234567890123459"
COHOST = "7101234567890123461"
SENDERS = ["6901234567890123401", "6901234567890123403", "6901234567890123405", "6901234567890123407",
           "6901234567890123409", "6901234567890123411"]
T0 = 1767225600000


def msg_id(seq: int) -> str:
    return str(7309000000000000001 + seq)


# The session's lines, in the order the library emitted them: (line, what it is).
CHAT_LINE = 1
GIFT_LINES = {  # line -> (msg seq, sender, gift id, type, coins, repeat count, repeat end, group id, creator)
    2: (1, 0, 5655, 1, 1, 1, False, "7308000000000000001", HOST),  # Rose streak, with its final event
    3: (4, 1, 5487, 1, 5, 1, False, "7308000000000000003", HOST),  # Finger Heart streak, its final event lost
    4: (2, 0, 5655, 1, 1, 2, False, "7308000000000000001", HOST),
    5: (5, 1, 5487, 1, 5, 2, False, "7308000000000000003", HOST),
    6: (7, 2, 7312, 2, 44999, 1, False, "", HOST),  # TikTok Universe, not streakable
    7: (3, 0, 5655, 1, 1, 5, True, "7308000000000000001", HOST),  # the Rose streak's final event
    8: (8, 3, 11046, 2, 1000, 1, False, "", COHOST),  # Galaxy to the co-host
    9: (6, 1, 5487, 1, 5, 3, False, "7308000000000000003", HOST),  # the lost streak's last seen event
    10: (8, 3, 11046, 2, 1000, 1, False, "", COHOST),  # the co-host's gift pushed again: the same msgId
    11: (9, 4, 7934, 2, 500, 1, False, "", HOST),  # names no toUser: the room's anchor
}
NOBODY_LINE = 12  # names neither a receiving user nor the room's anchor

# Coins credited by hand: a streak once with its last count, a plain gift once, a resend never.
HOST_COINS = 1 * 5 + 5 * 3 + 44999 * 1 + 500 * 1
COHOST_COINS = 1000 * 1
LOST_STREAK_COINS = 5 * 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The saved session, made by the library (fails, not skips, without node or the installed package)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: these tests drive tiktok-live-connector (Node.js >= 20); then {INSTALL}")
    if not (FIXTURE / "node_modules" / "tiktok-live-connector" / "package.json").is_file():
        pytest.fail(f"tiktok-live-connector is not installed in {FIXTURE}: {INSTALL}")
    out = tmp_path_factory.mktemp("tlc") / "session.jsonl"
    done = subprocess.run([node, "make-session.mjs", str(out)], cwd=FIXTURE, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lines": 12, "gifts": 11}
    return out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_library_emits_the_decoded_message_with_int64_as_decimal_strings(saved):
    """The facts the reader rests on, checked on the library's own output (a version that changes them fails)."""
    got = lines(saved)
    installed = json.loads((FIXTURE / "node_modules" / "tiktok-live-connector" / "package.json").read_text())
    assert installed["version"] == json.loads((FIXTURE / "package.json").read_text())["dependencies"][
        "tiktok-live-connector"] == "2.5.0"
    gift = got[0 + 1]
    assert gift["common"]["method"] == "WebcastGiftMessage"
    for value in (gift["common"]["msgId"], gift["common"]["roomId"], gift["common"]["createTime"], gift["giftId"],
                  gift["groupId"], gift["user"]["id"], gift["toUser"]["id"], gift["gift"]["id"],
                  gift["monitorInfo"]["anchorId"]):
        assert isinstance(value, str) and value.isdigit(), value
    assert gift["common"]["msgId"] == msg_id(1) and int(gift["common"]["msgId"]) > 2**53
    for value in (gift["repeatCount"], gift["repeatEnd"], gift["gift"]["type"], gift["gift"]["diamondCount"]):
        assert type(value) is int, value  # int32 fields: JS numbers (repeatEnd 0 or 1, not a boolean)
    assert "giftDetails" not in gift and "diamondCount" not in gift  # 2.x does not flatten as 1.x did
    assert "toUser" not in got[NOBODY_LINE - 1] and "monitorInfo" not in got[NOBODY_LINE - 1]
    assert got[CHAT_LINE - 1]["common"]["method"] == "WebcastChatMessage"


def test_read_saved_gives_one_item_per_line_with_exact_ids(saved):
    items = list(read_saved(saved))
    assert len(items) == len(saved.read_text().splitlines()) == 12
    assert items[CHAT_LINE - 1] == Unmapped(f"{saved}:{CHAT_LINE}", "a WebcastChatMessage, not a gift message (the "
                                                                     "gift event is a WebcastGiftMessage)")
    for line, (seq, sender, gift_id, gift_type, coins, count, end, group, creator) in GIFT_LINES.items():
        assert items[line - 1] == LiveGift(
            msg_id=msg_id(seq), room_id=ROOM, receiver_id="" if line == 11 else creator, host_id=HOST,
            sender_id=SENDERS[sender], gift_id=gift_id, gift_type=gift_type, diamond_count=coins, repeat_count=count,
            repeat_end=end, group_id=group, create_time_ms=T0 + seq * 1000), line
    assert items[NOBODY_LINE - 1] == LiveGift(
        msg_id=msg_id(10), room_id=ROOM, receiver_id="", host_id="", sender_id=SENDERS[5], gift_id=7934, gift_type=2,
        diamond_count=500, repeat_count=1, repeat_end=False, group_id="", create_time_ms=T0 + 10 * 1000)


def events_of(gift: dict) -> dict:
    """The gift event of a saved gift line, by hand (its creator left to the caller)."""
    event = {"event_id": gift["common"]["msgId"], "room_id": gift["common"]["roomId"], "creator_id": None,
             "sender_id": gift["user"]["id"], "gift_id": int(gift["giftId"]), "gift_type": gift["gift"]["type"],
             "diamond_count": gift["gift"]["diamondCount"], "repeat_count": gift["repeatCount"],
             "repeat_end": gift["repeatEnd"] == 1 and gift["gift"]["type"] == 1,
             "ts": int(gift["common"]["createTime"])}
    return event | ({"group_id": gift["groupId"]} if gift["groupId"] != "0" else {})


def import_(tmp_path: Path, *files: Path, strict: bool = False) -> tuple[int, list[dict], list[dict]]:
    out, unmapped = tmp_path / "gifts.jsonl", tmp_path / "unmapped.jsonl"
    rc = main(["import", "--from", "tiktok-live-connector", *map(str, files), "--out", str(out),
               "--unmapped", str(unmapped), *(["--strict"] if strict else [])])
    return rc, [json.loads(r) for r in read_session(out)], [json.loads(r) for r in read_session(unmapped)]


def test_import_writes_the_gift_events_and_lists_what_it_cannot_map(saved, tmp_path, capsys):
    rc, events, unmapped = import_(tmp_path, saved)
    assert rc == 0
    assert [e["event_id"] for e in events] == [msg_id(GIFT_LINES[n][0]) for n in sorted(GIFT_LINES)]
    assert events[0] == {"event_id": msg_id(1), "room_id": ROOM, "creator_id": HOST, "sender_id": SENDERS[0],
                         "gift_id": 5655, "gift_type": 1, "diamond_count": 1, "repeat_count": 1, "repeat_end": False,
                         "ts": T0 + 1000, "group_id": "7308000000000000001"}
    assert events[4] == {"event_id": msg_id(7), "room_id": ROOM, "creator_id": HOST, "sender_id": SENDERS[2],
                         "gift_id": 7312, "gift_type": 2, "diamond_count": 44999, "repeat_count": 1,
                         "repeat_end": False, "ts": T0 + 7000}
    assert events[6]["creator_id"] == events[8]["creator_id"] == COHOST
    assert events[9]["creator_id"] == HOST  # no toUser: monitorInfo.anchorId
    assert unmapped == [
        {"where": f"{saved}:{CHAT_LINE}", "reason": "a WebcastChatMessage, not a gift message (the gift event is a "
                                                     "WebcastGiftMessage)"},
        {"where": f"{saved}:{NOBODY_LINE}", "reason": "no receiving user: the message names none and the room's "
                                                       "owner is unknown"},
    ]
    err = capsys.readouterr().err
    assert "imported 10 gift events" in err and "2 record(s) could not be mapped" in err
    assert import_(tmp_path, saved, strict=True)[0] == 1


def credited(records: list[bytes], final: bool) -> tuple[dict, dict[str, int]]:
    result = replay(records, load_policy(), partitions=1, final=final)
    engine = result.engines[0]
    return result.summary, {c: engine.creator(c).credited for c in (HOST, COHOST) if engine.creator(c)}


def test_replay_credits_exactly_once(saved, tmp_path, both_engines):
    policy = load_policy()
    assert policy.default_region == "US"  # no account records: every creator is priced at the default region
    milli_per_coin = policy.regions["US"].milli_diamonds_per_coin
    assert milli_per_coin == 1000  # the default policy: 1 diamond per coin
    import_(tmp_path, saved)
    records = read_session(tmp_path / "gifts.jsonl")

    summary, by_creator = credited(records, final=True)
    assert by_creator == {HOST: HOST_COINS * milli_per_coin, COHOST: COHOST_COINS * milli_per_coin}
    assert summary["milli_diamonds_credited"] == (HOST_COINS + COHOST_COINS) * milli_per_coin == 46_519_000
    assert summary["duplicates"] == 1  # the resend of the co-host's gift
    assert summary["streaks"] == 2 and summary["streak_timeouts"] == 1  # the lost final: by the timeout, once
    assert summary["credits"] == 5 and summary["open_streaks"] == 0

    # Before the session ends the lost streak is still open (its timeout has not passed): not credited yet.
    summary, by_creator = credited(records, final=False)
    assert by_creator[HOST] == (HOST_COINS - LOST_STREAK_COINS) * milli_per_coin
    assert summary["open_streaks"] == 1 and summary["streak_timeouts"] == 0


def test_the_receiver_is_to_user_then_monitor_info_then_the_anchor(saved, tmp_path):
    cohost = lines(saved)[7]  # toUser and monitorInfo.toUserId: the co-host; monitorInfo.anchorId: the host
    variants = [
        {k: v for k, v in cohost.items() if k != "monitorInfo"},  # toUser only
        dict(cohost, monitorInfo=dict(cohost["monitorInfo"], toUserId=SENDERS[5])),  # toUser wins
        {k: v for k, v in cohost.items() if k != "toUser"},  # monitorInfo.toUserId
        {k: v for k, v in cohost.items() if k != "toUser"} | {"monitorInfo": dict(cohost["monitorInfo"],
                                                                                 toUserId="0")},  # the anchor
    ]
    path = tmp_path / "receivers.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in variants))
    assert [(i.receiver_id, i.host_id) for i in read_saved(path)] == [
        (COHOST, ""), (COHOST, HOST), (COHOST, HOST), ("", HOST)]
    assert import_(tmp_path, path, strict=True)[1:] == ([dict(events_of(g), creator_id=c) for g, c in zip(
        variants, [COHOST, COHOST, COHOST, HOST], strict=True)], [])


def test_a_number_id_above_2_53_lost_its_precision(saved, tmp_path):
    """The library hands strings; a program that turned one into a JSON number rounded it (if it was > 2**53-1)."""
    gift = lines(saved)[1]
    rounded = dict(gift, common=dict(gift["common"], msgId=int(float(gift["common"]["msgId"]))))
    small = dict(gift, common=dict(gift["common"], msgId=9007199254740991))  # 2**53-1: still exact
    as_float = dict(gift, user=dict(gift["user"], id=6.901234567890124e18))
    path = tmp_path / "numbers.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in (rounded, small, as_float)))
    items = list(read_saved(path))
    assert items[0] == Unmapped(f"{path}:1", f"common.msgId {int(float(gift['common']['msgId']))}: {LOST_PRECISION}")
    assert isinstance(items[1], LiveGift) and items[1].msg_id == "9007199254740991"
    assert items[2] == Unmapped(f"{path}:3", f"user.id 6.901234567890124e+18: {LOST_PRECISION}")


def test_unreadable_lines_are_listed_with_their_reasons(saved, tmp_path):
    gift = lines(saved)[1]
    v1 = {"msgId": "7309000000000000002", "giftId": 5655, "giftType": 1, "diamondCount": 1, "repeatCount": 1,
          "repeatEnd": False, "userId": SENDERS[0]}
    bad = [
        "not json at all",
        "",
        json.dumps([gift]),
        json.dumps(v1),
        json.dumps(dict(gift, gift=None)),
        json.dumps(dict(gift, common=dict(gift["common"], msgId="0"))),
        json.dumps(dict(gift, repeatEnd=2)),
        json.dumps(dict(gift, repeatCount="3")),
        json.dumps(dict(gift, gift=dict(gift["gift"], diamondCount=0))),
        json.dumps(gift),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(bad) + "\n")
    items = list(read_saved(path))
    assert len(items) == len(bad)
    reasons = [(i.where, i.reason) for i in items[:-2]]
    assert reasons[0][0] == f"{path}:1" and reasons[0][1].startswith("not JSON: ")
    assert reasons[1:] == [
        (f"{path}:2", "an empty line, not a saved event"),
        (f"{path}:3", "not a saved event: a JSON list, not an object"),
        (f"{path}:4", "a tiktok-live-connector 1.x gift object (flattened: msgId, giftType, diamondCount at its top); "
                      "this reads 2.x's emitted WebcastGiftMessage (common, gift, toUser)"),
        (f"{path}:5", "no gift details (gift): the gift's type and coin price are unknown"),
        (f"{path}:6", "no common.msgId: absent or 0 (a resend could not be told from a new gift)"),
        (f"{path}:7", "repeatEnd 2 is neither 0 nor 1"),
        (f"{path}:8", "repeatCount '3' is not an integer"),
    ]
    assert isinstance(items[-2], LiveGift) and items[-2].diamond_count == 0  # the contract says why (below)
    assert isinstance(items[-1], LiveGift)
    rc, events, unmapped = import_(tmp_path, path)
    assert rc == 0 and [e["event_id"] for e in events] == [msg_id(1)]
    assert unmapped[-1] == {"where": f"{path}:9", "reason": "diamond_count 0 is outside 1..10,000,000 coins"}
    assert len(unmapped) == len(bad) - 1


def test_a_gzipped_session_reads_the_same(saved, tmp_path):
    gz = tmp_path / "session.jsonl.gz"
    gz.write_bytes(gzip.compress(saved.read_bytes()))
    assert [i for i in read_saved(gz) if isinstance(i, LiveGift)] == \
        [i for i in read_saved(saved) if isinstance(i, LiveGift)]
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(saved.read_bytes())[:-200])
    items = list(read_saved(broken))
    assert isinstance(items[-1], Unmapped) and items[-1].reason.startswith("the file cannot be read from here on")
