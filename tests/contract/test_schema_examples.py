"""The JSON Schemas in schemas/ are the contract: check them and their examples.

Layout: schemas/<name>.schema.json, valid examples in schemas/examples/<name>/*.json, invalid ones in
schemas/examples/<name>/invalid/*.json, and the policy file example in schemas/examples/policy.example.toml.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLE_DIR = SCHEMA_DIR / "examples"
POLICY_TOML = EXAMPLE_DIR / "policy.example.toml"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

EXPECTED_SCHEMAS = {
    "gift-event",
    "creator-account",
    "payout-notice",
    "window-total",
    "late-gift",
    "dead-letter",
    "policy",
}
# Records we consume from upstream may carry extra fields; records we produce may not.
OPEN_SCHEMAS = {"gift-event", "creator-account"}


def _schema_names() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def _schema(name: str) -> dict[str, Any]:
    return _load_json(SCHEMA_DIR / f"{name}.schema.json")


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _examples(name: str, *, invalid: bool) -> list[Path]:
    folder = EXAMPLE_DIR / name / "invalid" if invalid else EXAMPLE_DIR / name
    return sorted(folder.glob("*.json"))


def _example_params(*, invalid: bool) -> list[Any]:
    return [
        pytest.param(name, path, id=str(path.relative_to(EXAMPLE_DIR)))
        for name in _schema_names()
        for path in _examples(name, invalid=invalid)
    ]


def _valid_records(name: str) -> list[dict[str, Any]]:
    return [_load_json(p) for p in _examples(name, invalid=False)]


def _load_policy_toml() -> dict[str, Any]:
    with POLICY_TOML.open("rb") as f:
        return tomllib.load(f)


def test_all_expected_schemas_present() -> None:
    assert set(_schema_names()) == EXPECTED_SCHEMAS


@pytest.mark.parametrize("name", _schema_names())
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"https://giftstream.dev/schemas/{name}.schema.json"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is (name in OPEN_SCHEMAS)
    # Every required field is declared (a typo in `required` would make every record invalid).
    assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize("name", _schema_names())
def test_each_schema_has_valid_and_invalid_examples(name: str) -> None:
    assert 2 <= len(_examples(name, invalid=False)) <= 4
    assert 2 <= len(_examples(name, invalid=True)) <= 4


@pytest.mark.parametrize(("name", "path"), _example_params(invalid=False))
def test_valid_example_validates(name: str, path: Path) -> None:
    errors = [e.message for e in _validator(name).iter_errors(_load_json(path))]
    assert errors == []


@pytest.mark.parametrize(("name", "path"), _example_params(invalid=True))
def test_invalid_example_fails_for_exactly_one_reason(name: str, path: Path) -> None:
    # Exactly one error keeps each invalid example a single, deliberate defect rather than a broken file.
    errors = list(_validator(name).iter_errors(_load_json(path)))
    assert len(errors) == 1, [e.message for e in errors]


def test_gift_event_schema_lists_all_known_fields() -> None:
    """The schema and the decoder (stream.engine.model.GiftEvent) name the same fields and the same required ones."""
    import msgspec

    from stream.engine.model import GiftEvent

    schema = _schema("gift-event")
    fields = msgspec.structs.fields(GiftEvent)
    assert set(schema["properties"]) == {f.name for f in fields}
    assert set(schema["required"]) == {f.name for f in fields if f.required}


def test_creator_account_schema_lists_the_records_fields() -> None:
    """The schema and the decoder (stream.engine.model.CreatorAccount) name the same fields, all required."""
    import msgspec

    from stream.engine.model import CreatorAccount

    schema = _schema("creator-account")
    fields = msgspec.structs.fields(CreatorAccount)
    assert list(schema["properties"]) == list(schema["required"]) == [f.name for f in fields]
    assert all(f.required for f in fields)


def test_creator_account_examples_are_accepted_by_the_engine(policy) -> None:
    """Each valid example decodes (keyed by its creator_id) and passes the default policy's checks; each invalid
    one is refused by the decoder or the engine too."""
    from stream.engine.model import CreatorAccount, decode_account
    from stream.engine.reference import Outputs, PartitionEngine

    for valid in (True, False):
        for path in _examples("creator-account", invalid=not valid):
            raw = path.read_bytes()
            key = str(json.loads(raw).get("creator_id", "")).encode()
            decoded = decode_account(key, raw, 0)
            out = Outputs()
            PartitionEngine(policy).apply_accounts([decoded], [raw], None, out)
            assert (type(decoded) is CreatorAccount and not out.dead_letters) is valid, (path.name, out.dead_letters)


def test_gift_event_allows_unknown_upstream_fields() -> None:
    record = _load_json(EXAMPLE_DIR / "gift-event" / "streak-final-event.json")
    record["some_future_upstream_field"] = {"nested": [1, 2, 3]}
    assert _validator("gift-event").is_valid(record)


def test_policy_toml_example_validates() -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in _validator("policy").iter_errors(_load_policy_toml())
    ]
    assert errors == []


def _statuses(policy: dict[str, Any]) -> dict[str, bool]:
    statuses = policy.get("account_statuses", {"standard": {"eligible": True}})  # the loader's default
    return {name: spec["eligible"] for name, spec in statuses.items()}


def _thresholds(policy: dict[str, Any], settings: dict[str, Any]) -> dict[str, int]:
    """threshold_cents as a table status -> cents (an integer is every status's)."""
    t = settings["threshold_cents"]
    return dict.fromkeys(_statuses(policy), t) if isinstance(t, int) else t


def _effective_region_settings(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each region's settings: the defaults overridden key by key, a threshold table laid over the defaults'."""
    defaults = policy["defaults"]
    regions = {}
    for code, override in policy.get("regions", {}).items():
        merged = {**defaults, **override}
        if isinstance(override.get("threshold_cents"), dict):
            merged["threshold_cents"] = {**_thresholds(policy, defaults), **override["threshold_cents"]}
        regions[code] = merged
    return regions


@pytest.mark.parametrize(
    "policy",
    [pytest.param(_load_policy_toml(), id="policy.example.toml")]
    + [pytest.param(_load_json(p), id=p.name) for p in _examples("policy", invalid=False)],
)
def test_policy_examples_cross_field_rules(policy: dict[str, Any]) -> None:
    # Rules the loader enforces that JSON Schema cannot express.
    statuses = _statuses(policy)
    regions = _effective_region_settings(policy)
    for settings in [policy["defaults"], *regions.values()]:
        assert settings["payout_method"] in settings["fees"]
        rate = Fraction(settings["diamonds_per_coin"])
        assert rate > 0
        assert (rate * 1000).denominator == 1, "diamonds_per_coin must be a multiple of 1/1000"
    for settings in regions.values() if regions else [policy["defaults"]]:
        thresholds = _thresholds(policy, settings)
        assert set(thresholds) <= set(statuses)
        assert {s for s, eligible in statuses.items() if eligible} <= set(thresholds)
    accounts = policy.get("accounts", {})
    assert accounts.get("missing_status", next(iter(statuses)) if len(statuses) == 1 else "standard") in statuses
    assert accounts.get("default_region") is None or accounts["default_region"] in regions


def test_policy_toml_example_regions() -> None:
    policy = _load_policy_toml()
    regions = _effective_region_settings(policy)
    assert set(regions) == {"US", "GB", "DE", "FR", "BR", "MX", "ID", "JP", "KR", "TR"}
    thresholds = [t for s in regions.values() for t in _thresholds(policy, s).values()]
    assert all(100 <= t <= 10_000 for t in thresholds)  # $1 .. $100
    assert min(thresholds) == 100
    assert max(thresholds) == 10_000
    assert all(_thresholds(policy, s)["verified"] <= _thresholds(policy, s)["standard"] for s in regions.values())
    assert regions["KR"]["min_age"] == 19 and policy["defaults"]["min_age"] == 18
    assert set(_statuses(policy)) == {"verified", "standard", "restricted", "suspended"}
    assert all(s["daily_cap_cents"] == 100_000 for s in regions.values())  # $1,000 per day
    assert regions["KR"]["eligible"] is True
    assert regions["TR"]["eligible"] is False
    assert [code for code, s in regions.items() if not s["eligible"]] == ["TR"]


def _round_half_up(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def test_policy_examples_with_regions_load(policy) -> None:
    """The loader takes the TOML example and every JSON example that lists regions (one without regions is
    a schema example only: the loader needs at least one), and agrees with the built-in policy's statuses."""
    from stream.engine.policy import load_policy, parse_policy

    assert load_policy(POLICY_TOML).statuses == policy.statuses
    for path in _examples("policy", invalid=False):
        data = _load_json(path)
        if data.get("regions"):
            parse_policy(data, path.name)


def test_payout_notice_examples_are_arithmetically_consistent() -> None:
    """The cross-field rules of the schema's description, on every valid example (written out again here)."""
    for n in _valid_records("payout-notice"):
        assert n["notice_id"] == f"pn-{n['creator_id']}-{n['crossing_seq']}"
        assert n["gross_cents"] == _round_half_up(n["balance_milli_diamonds"] * 5000, 1000 * 10_000)  # $0.005/diamond
        assert n["payable_cents"] == min(n["gross_cents"], n["daily_cap_cents"])
        assert n["service_fee_cents"] == _round_half_up(n["payable_cents"] * n["service_fee_bps"], 10_000)
        assert n["net_cents"] == n["payable_cents"] - n["service_fee_cents"] - n["method_fee_cents"] >= 0
        assert n["gross_cents"] >= n["threshold_cents"]
        assert (n["trigger_event_id"] is None) is (n["trigger"] == "account")
    assert {n["trigger"] for n in _valid_records("payout-notice")} == {"gift", "account"}


def test_payout_notice_schema_ties_the_trigger_event_id_to_the_trigger() -> None:
    v = _validator("payout-notice")
    [gift] = [n for n in _valid_records("payout-notice") if n["creator_id"] == "6812345678901234567"]
    assert v.is_valid(gift) and not v.is_valid({**gift, "trigger_event_id": None})
    assert v.is_valid({**gift, "trigger": "account", "trigger_event_id": None})
    assert not v.is_valid({**gift, "trigger": "payout"})


def test_engine_output_examples_are_what_the_engine_writes(policy) -> None:
    """The payout-notice examples and the key_mismatch dead letter are the reference engine's outputs on the
    built-in policy (regenerate: python -m tests.support.schema_examples --write)."""
    from tests.support.schema_examples import generate

    files = generate(policy)
    assert {rel for rel in files if rel.startswith("payout-notice/")} == {
        str(p.relative_to(EXAMPLE_DIR)) for p in _examples("payout-notice", invalid=False)}
    for rel, text in files.items():
        assert (EXAMPLE_DIR / rel).read_text(encoding="utf-8") == text, rel


def _assert_window_bounds(window: dict[str, Any]) -> None:
    assert window["window_end"] > window["window_start"]


def test_window_examples_have_ordered_bounds() -> None:
    for total in _valid_records("window-total"):
        _assert_window_bounds(total)
    for late in _valid_records("late-gift"):
        assert late["watermark"] > late["ts"]
        for window in late["missed_windows"]:
            _assert_window_bounds(window)
            assert window["window_start"] <= late["ts"] < window["window_end"]
            assert window["window_end"] < late["watermark"]


def test_dead_letter_examples_carry_decodable_raw_bytes() -> None:
    for dl in _valid_records("dead-letter"):
        base64.b64decode(dl["raw_b64"], validate=True)
    not_base64 = _load_json(EXAMPLE_DIR / "dead-letter" / "invalid" / "raw-not-base64.json")["raw_b64"]
    with pytest.raises(binascii.Error):
        base64.b64decode(not_base64, validate=True)


def test_dead_letter_reasons_are_the_engines_reject_reasons():
    """Every reason a dead letter can carry is in the schema's enum and has its metric label, and no other."""
    from stream.engine.model import REJECT_REASONS

    assert _schema("dead-letter")["properties"]["reason"]["enum"] == list(REJECT_REASONS)
