"""Policy files: the built-in one and the schema example load; bad ones fail with every problem named."""

from __future__ import annotations

import re
import tomllib
from fractions import Fraction
from pathlib import Path

import pytest

from stream.engine.policy import CLOSED, Fee, PolicyError, bps_of, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_and_example_policies_load():
    builtin = load_policy()
    assert builtin.regions["ID"].diamonds_per_coin == Fraction(1, 2)
    assert builtin.threshold_milli("TR", "verified") is None  # not eligible: never notified
    assert builtin.pane_ms == 300_000
    assert builtin.statuses == {"verified": True, "standard": True, "restricted": False, "suspended": False}
    assert (builtin.missing_status, builtin.default_region) == ("standard", "US")
    assert builtin.regions["US"].thresholds_cents == {"verified": 500, "standard": 1000}
    assert (builtin.regions["US"].service_fee_bps, builtin.regions["ID"].service_fee_bps) == (2500, 2000)
    assert (builtin.regions["KR"].service_fee_bps, builtin.regions["KR"].min_age) == (3000, 19)
    assert builtin.regions["US"].min_age == 18
    example = load_policy(ROOT / "schemas/examples/policy.example.toml")
    assert example.regions and example.statuses == builtin.statuses


def base() -> dict:
    return tomllib.loads((ROOT / "stream/data/policy.default.toml").read_text())


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["defaults"].update(threshold_cents=10.5), "regions.TR.threshold_cents: must be an integer"),
    (lambda d: d["regions"]["US"].update(threshold_cents=10.5), "regions.US.threshold_cents: must be an integer"),
    (lambda d: d["regions"]["US"].update(threshold_cents=True), "regions.US.threshold_cents: must be an integer"),
    (lambda d: d["regions"]["US"].update(threshold_cents=-1), "regions.US.threshold_cents.standard: must be in"),
    (lambda d: d["regions"]["US"].update(threshold_cents={"verified": -1}),
     "regions.US.threshold_cents.verified: must be in"),
    (lambda d: d["regions"]["US"].update(threshold_cents={"standard": 9.5}),
     "regions.US.threshold_cents.standard: must be an integer"),
    # every eligible status needs a threshold in every region (an ineligible one need not have one)
    (lambda d: d["regions"]["US"].update(threshold_cents={"standard": 1000}) or d["defaults"].update(
        threshold_cents={"standard": 1000}), "regions.US.threshold_cents: needs a threshold for the eligible status "
                                             "'verified'"),
    (lambda d: d["regions"]["US"].update(threshold_cents={"gold": 5}),
     "regions.US.threshold_cents.gold: is not an account status"),
    (lambda d: d["account_statuses"].update(closed={"eligible": False}), "account_statuses.closed: a status is"),
    (lambda d: d["account_statuses"].update(Gold={"eligible": True}), "account_statuses.Gold: a status is"),
    (lambda d: d["account_statuses"].update(gold={"eligible": "yes"}),
     "account_statuses.gold: must be a table {eligible = true|false}"),
    (lambda d: d["account_statuses"].update(gold=True), "account_statuses.gold: must be a table"),
    (lambda d: d.update(account_statuses={}), "account_statuses: must be a table naming at least one status"),
    (lambda d: d["accounts"].update(missing_status="gold"), "accounts.missing_status: must name one of the account "
                                                            "statuses"),
    (lambda d: d["accounts"].pop("missing_status") and d["account_statuses"].pop("standard"),
     "accounts.missing_status: must name one of the account statuses ['restricted', 'suspended', 'verified'], "
     "got 'standard'"),  # the default: the only status, or "standard"
    (lambda d: d["accounts"].update(default_region="ZZ"), "accounts.default_region: must name one of the regions"),
    (lambda d: d["accounts"].update(default_region="us"), "accounts.default_region: must name one of the regions"),
    (lambda d: d["accounts"].update(fallback="US"), "accounts.fallback: unknown setting"),
    (lambda d: d.update(accounts="US"), "accounts: must be a table"),
    (lambda d: d["defaults"].update(service_fee_bps=-1), "regions.US.service_fee_bps: must be in [0, 10000]"),
    (lambda d: d["regions"]["KR"].update(service_fee_bps=10_001), "regions.KR.service_fee_bps: must be in [0, 10000]"),
    (lambda d: d["regions"]["KR"].update(service_fee_bps=25.5), "regions.KR.service_fee_bps: must be an integer"),
    (lambda d: d["regions"]["KR"].update(min_age=151), "regions.KR.min_age: must be in [0, 150]"),
    (lambda d: d["regions"]["KR"].update(min_age=-1), "regions.KR.min_age: must be in [0, 150]"),
    (lambda d: d["regions"]["KR"].update(min_age="19"), "regions.KR.min_age: must be an integer"),
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
    with pytest.raises(PolicyError, match=re.escape(message)):
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


def test_thresholds_are_per_status_and_a_region_table_is_laid_over_the_defaults():
    data = base()
    data["defaults"]["threshold_cents"] = {"verified": 500, "standard": 1000, "suspended": 7}
    data["regions"]["US"]["threshold_cents"] = {"standard": 700}  # verified and suspended: the defaults'
    data["regions"]["GB"]["threshold_cents"] = 300  # the int shorthand: every status
    data["regions"]["DE"].pop("threshold_cents")  # the defaults' table as it is
    p = parse_policy(data)
    assert p.regions["US"].thresholds_cents == {"verified": 500, "standard": 700, "suspended": 7}
    assert p.regions["GB"].thresholds_cents == dict.fromkeys(["verified", "standard", "restricted", "suspended"], 300)
    assert p.regions["DE"].thresholds_cents == {"verified": 500, "standard": 1000, "suspended": 7}
    data["defaults"]["threshold_cents"] = 400  # an int default under a region's table: every status, then the table
    p = parse_policy(data)
    assert p.regions["US"].thresholds_cents == {"verified": 400, "standard": 700, "restricted": 400, "suspended": 400}


def test_an_ineligible_status_needs_no_threshold():
    data = base()
    data["defaults"]["threshold_cents"] = {"verified": 500, "standard": 1000}
    for region in data["regions"].values():
        region.pop("threshold_cents", None)
    p = parse_policy(data)
    assert "suspended" not in p.regions["US"].thresholds_cents
    assert p.threshold_milli("US", "suspended") is None


def test_threshold_milli_needs_an_eligible_region_status_and_age():
    p = load_policy()
    # US verified: $5 = 1,000 diamonds at $0.005; standard $10
    assert p.threshold_milli("US", "verified") == 1_000_000 and p.threshold_milli("US", "standard") == 2_000_000
    assert p.threshold_milli("US", "verified", age=18) == 1_000_000  # min_age 18: 18 is old enough
    assert p.threshold_milli("US", "verified", age=17) is None
    assert p.threshold_milli("KR", "verified", age=18) is None and p.threshold_milli("KR", "verified", age=19)
    assert p.threshold_milli("US", "suspended") is None and p.threshold_milli("US", "restricted") is None
    assert p.threshold_milli("US", CLOSED) is None and p.threshold_milli("US", "gold") is None
    assert p.threshold_milli("TR", "verified", age=40) is None  # the region is not eligible
    # The threshold is on the exact value: the smallest balance worth it, rounded up to a milli-diamond.
    data = base()
    data["regions"]["US"]["diamond_value_micro_usd"] = 3
    assert parse_policy(data).threshold_milli("US", "verified") == -(-500 * 10_000 * 1000 // 3)


def test_without_account_sections_there_is_one_eligible_status():
    data = base()
    del data["account_statuses"], data["accounts"]
    data["defaults"]["threshold_cents"] = 1000
    for region in data["regions"].values():
        region.pop("threshold_cents", None)
    p = parse_policy(data)
    assert p.statuses == {"standard": True}
    assert (p.missing_status, p.default_region) == ("standard", None)  # no default region: region-less gifts bounce
    data["account_statuses"] = {"member": {"eligible": True}}  # the only status is the missing one
    assert parse_policy(data).missing_status == "member"


def test_service_fee_and_min_age_default_to_zero_and_take_their_bounds():
    data = base()
    for key in ("service_fee_bps", "min_age"):
        data["defaults"].pop(key)
        for region in data["regions"].values():
            region.pop(key, None)
    p = parse_policy(data)
    assert {(r.service_fee_bps, r.min_age) for r in p.regions.values()} == {(0, 0)}
    data["regions"]["US"].update(service_fee_bps=10_000, min_age=150)
    assert (parse_policy(data).regions["US"].service_fee_bps, parse_policy(data).regions["US"].min_age) == (10_000, 150)


@pytest.mark.parametrize(("milli", "cents"), [
    (0, 0), (999, 0), (1_000, 1),  # 1 diamond = 0.5 cent: half up
    (2_999, 1), (3_000, 2),  # 1.4995 -> 1, 1.5 -> 2
    (4_999, 2), (5_000, 3),  # 2.4995 -> 2, 2.5 -> 3 (half up, not half even)
    (2_469_000, 1235), (20_500_000, 10_250),
])
def test_value_cents_rounds_half_up(milli, cents):
    assert load_policy().regions["US"].value_cents(milli) == cents


@pytest.mark.parametrize(("amount", "bps", "cents"), [
    (0, 2500, 0), (1, 5000, 1), (3, 5000, 2), (5, 5000, 3),  # 0.5, 1.5, 2.5: all up
    (10, 250, 0), (30, 2500, 8), (1235, 2500, 309),  # 0.25 down, 7.5 up, 308.75 up
    (37_500, 290, 1088), (750, 290, 22), (1_000, 290, 29),  # 1087.5, 21.75, 29.0
    (100_000, 2500, 25_000), (10_250, 3000, 3075), (12_345, 10_000, 12_345),
])
def test_bps_of_rounds_half_up(amount, bps, cents):
    assert bps_of(amount, bps) == cents


def test_a_method_fee_is_its_fixed_part_plus_its_rate_never_above_the_amount():
    assert Fee(0, 290).of(37_500) == 1088
    assert Fee(25, 0).of(7175) == 25
    assert Fee(25, 100).of(50) == 26  # 25 + 0.5 -> 26
    assert Fee(25, 0).of(10) == 10  # never more than the amount
    assert Fee(25, 290).of(0) == 0 and Fee(25, 290).of(-5) == 0


@pytest.mark.parametrize("key", ["missing_status", "default_region"])
def test_a_non_string_account_setting_is_a_policy_error(key):
    data = base()
    data["accounts"][key] = ["US"]
    with pytest.raises(PolicyError, match=f"accounts.{key}: must name one of"):
        parse_policy(data)
