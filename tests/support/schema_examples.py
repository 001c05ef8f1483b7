"""The schema examples that are engine outputs (schemas/examples/payout-notice/*.json and one dead letter), made by
the reference engine on the built-in policy so that every number in them is a true output. The contract test
(tests/contract/test_schema_examples.py) checks the files are what this writes; after a change to the policy or
the notice, regenerate them with

    python -m tests.support.schema_examples --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson

from stream.engine import model
from stream.engine.policy import Policy, load_policy
from stream.engine.reference import Outputs, PartitionEngine

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"

US, KR, BR, DE = "6812345678901234567", "7123456789012345678", "creator-br-7", "7001234567890123456"


def _gift(event_id: str, creator: str, coins: int, ts: int, region: str | None = None) -> bytes:
    rec = {"event_id": event_id, "room_id": "7311499999999990001", "creator_id": creator,
           "sender_id": "6900000000000000777", "gift_id": 7312, "gift_type": 0, "diamond_count": coins,
           "repeat_count": 1, "repeat_end": False, "ts": ts}
    if region is not None:
        rec["region"] = region
    return orjson.dumps(rec)


def _account(creator: str, region: str, status: str, method: str, age: int, ts: int) -> tuple[bytes, bytes, int]:
    return creator.encode(), orjson.dumps({"creator_id": creator, "region": region, "account_status": status,
                                           "payout_method": method, "age": age, "updated_ts": ts}), ts


def _payout(payout_id: str, creator: str, milli: int, ts: int) -> bytes:
    return orjson.dumps({"payout_id": payout_id, "creator_id": creator, "milli_diamonds": milli, "ts": ts})


# One partition's input, in order: ("gifts", records), ("accounts", (key, value, ts) records), ("payouts", records).
SESSION: list[tuple[str, list]] = [
    ("accounts", [_account(KR, "KR", "verified", "bank", 19, 1795610000000),
                  _account(BR, "BR", "standard", "paypal", 22, 1795610000000),
                  _account(DE, "DE", "suspended", "bank", 34, 1795610000000)]),
    ("gifts", [_gift("7311500000000000001", KR, 10_000, 1795612000000),  # KR verified: $50 = 10,000 diamonds
               _gift("7311500000000000002", BR, 1_000, 1795612000001),  # BR standard: $5 = 1,000 diamonds
               _gift("7311500000000000003", DE, 2_469, 1795612000002, "DE")]),  # suspended: no notice
    ("payouts", [_payout("po-kr-1", KR, 10_000_000, 1795613000000), _payout("po-br-1", BR, 1_000_000, 1795613000000)]),
    ("gifts", [_gift("7311500000000000004", KR, 10_000, 1795614000000),
               # A creator without an account record: the missing status (standard), the region's method.
               _gift("7311512345678901233", US, 1_999, 1795615392000, "US"),
               _gift("7311512345678901234", US, 1, 1795615392345, "US")]),
    ("payouts", [_payout("po-kr-2", KR, 10_000_000, 1795616000000)]),
    ("gifts", [_gift("7311520000000000001", KR, 20_500, 1795617667001)]),
    # The suspension ends: the balance is above the verified threshold already, so the account is the trigger.
    ("accounts", [_account(DE, "DE", "verified", "bank", 34, 1795618000000),
                  (DE.encode(), _account(DE + "7", "DE", "verified", "bank", 34, 1795618000000)[1], 1795618000000)]),
    ("gifts", [_gift("7311530000000000099", BR, 300_000, 1795618740000, "US")]),  # the account's region wins
]
NOTICES = {  # file name -> notice id
    "us-first-crossing-paypal.json": f"pn-{US}-1",
    "kr-verified-bank-third-crossing.json": f"pn-{KR}-3",
    "br-capped-by-daily-limit.json": f"pn-{BR}-2",
    "de-account-trigger-after-suspension.json": f"pn-{DE}-1",
}
DEAD_LETTERS = {"key-mismatch-creator-account.json": model.KEY_MISMATCH}


def run(policy: Policy) -> Outputs:
    engine, out, offset = PartitionEngine(policy), Outputs(), 1000
    for kind, records in SESSION:
        offsets = list(range(offset, offset + len(records)))
        offset += len(records)
        if kind == "gifts":
            engine.process(records, offsets, out)
        elif kind == "payouts":
            engine.apply_payouts([model.decode_payout(r) for r in records], records, offsets, out)
        else:
            engine.apply_accounts([model.decode_account(*r) for r in records], [r[1] for r in records], offsets, out)
    return out


def _json(record: object) -> str:
    return json.dumps(orjson.loads(model.encode(record)), indent=2) + "\n"


def generate(policy: Policy | None = None) -> dict[str, str]:
    """Example path (relative to schemas/examples) -> its text."""
    out = run(policy or load_policy())
    notices = {n.notice_id: n for n in out.notices}
    files = {f"payout-notice/{name}": _json(notices[nid]) for name, nid in NOTICES.items()}
    letters = {d.reason: d for d in out.dead_letters}
    files.update({f"dead-letter/{name}": _json(letters[reason]) for name, reason in DEAD_LETTERS.items()})
    return files


if __name__ == "__main__":
    if sys.argv[1:] not in (["--write"], ["--print"]):
        sys.exit(__doc__)
    for rel, text in generate().items():
        if sys.argv[1] == "--write":
            (EXAMPLES / rel).write_text(text)
            print(f"wrote {EXAMPLES / rel}")
        else:
            print(f"# {rel}\n{text}")
