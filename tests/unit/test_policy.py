"""Policy files: the built-in one and the schema example load; bad ones fail with every problem named."""

from __future__ import annotations

import tomllib
from fractions import Fraction
from pathlib import Path

import pytest

from stream.engine.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_and_example_policies_load():
    builtin = load_policy()
    assert builtin.regions["ID"].diamonds_per_coin == Fraction(1, 2)
    assert builtin.regions["TR"].threshold_milli_diamonds is None  # not eligible: never notified
    assert builtin.pane_ms == 300_000
    example = load_policy(ROOT / "schemas/examples/policy.example.toml")
    assert example.regions


def base() -> dict:
    return tomllib.loads((ROOT / "stream/data/policy.default.toml").read_text())


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["defaults"].update(threshold_cents=10.5), "regions.TR.threshold_cents: must be an integer"),
    (lambda d: d["regions"]["US"].update(threshold_cents=10.5), "regions.US.threshold_cents: must be an integer"),
    (lambda d: d["regions"]["US"].update(threshold_cents=-1), "regions.US.threshold_cents: must be in"),
    (lambda d: d["regions"]["ID"].update(diamonds_per_coin="1/3"), "multiple of 1/1000"),
    (lambda d: d["regions"]["ID"].update(diamonds_per_coin="0"), "must be positive"),
    (lambda d: d["regions"]["US"].update(payout_method="cheque"), "payout_method: must name one of"),
    (lambda d: d["regions"].update(usa={}), "ISO 3166"),
    (lambda d: d.update(regions={}), "regions: must list at least one region"),
    (lambda d: d["defaults"]["fees"]["paypal"].update(rate_bps=20_000), "rate_bps: must be in [0, 10000]"),
    (lambda d: d["windows"].update(hopping=[{"size": "1h", "hop": "7m"}]), "size must be a multiple of hop"),
    (lambda d: d["windows"].update(grace="soon"), "windows.grace: must be a duration"),
    (lambda d: d["limits"].update(dedupe_horizon="1m"), "limits.dedupe_horizon: must be at least"),
    (lambda d: d.update(currency="EUR"), "currency: only USD"),
    (lambda d: d.pop("policy_version"), "policy_version: must be a non-empty string"),
    (lambda d: d.update(surprise=1), "surprise: unknown setting"),
])
def test_invalid_policies_name_the_problem(change, message):
    data = base()
    change(data)
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(data, "test.toml")


def test_all_problems_are_reported_at_once():
    data = base()
    data["regions"]["US"]["threshold_cents"] = "ten"
    data["regions"]["KR"]["eligible"] = "yes"
    with pytest.raises(PolicyError) as e:
        parse_policy(data)
    assert "regions.US.threshold_cents" in str(e.value) and "regions.KR.eligible" in str(e.value)


def test_unreadable_or_broken_files_give_clear_errors(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("policy_version = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)
