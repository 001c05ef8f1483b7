"""The payout policy: per-region rates, thresholds, fees and caps, plus the engine's time settings.

Money is integers only: diamond balances are kept in milli-diamonds, values in USD micro-dollars per
diamond, thresholds/caps/fees in cents. `diamonds_per_coin` may be a rational ("1/2") but must be a
multiple of 1/1000 so a credit is always a whole number of milli-diamonds (nothing is rounded away).
The file is validated completely at start; every problem is reported with its path.

Accounts: the policy names the account statuses (each eligible for payouts or not) and the status a creator
without an account record has; thresholds are per region and per status. A creator is eligible when its region,
its status and its age (the region's min_age) all are.

Rounding, the one rule for money: every amount is computed exactly (integers and rationals) and rounded once,
half up, to a whole cent: the balance's value, the service fee, the method fee's percentage.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.engine.protocol import PricedIn

MILLI = 1000  # milli-diamonds per diamond
MICRO_USD_PER_CENT = 10_000
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_REGION = re.compile(r"^[A-Z]{2}$")
_REGION_KEYS = {
    "diamonds_per_coin", "diamond_value_micro_usd", "threshold_cents", "daily_cap_cents",
    "payout_method", "eligible", "fees", "service_fee_bps", "min_age",
}
_STATUS = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CLOSED = "closed"  # the status of an account whose record was deleted (a tombstone): never eligible, reserved
DEFAULT_STATUS = "standard"  # the one status of a policy that names none


class PolicyError(ValueError):
    """The policy file is invalid; the message lists every problem found."""


@dataclass(frozen=True, slots=True)
class Fee:
    fixed_cents: int
    rate_bps: int

    def of(self, amount_cents: int) -> int:
        """Fee for paying out `amount_cents`, rounded half up to a cent, never above the amount."""
        if amount_cents <= 0:
            return 0
        return min(amount_cents, self.fixed_cents + bps_of(amount_cents, self.rate_bps))


def bps_of(amount_cents: int, bps: int) -> int:
    """bps basis points of an amount, rounded half up to a cent (the policy's one rounding rule)."""
    return (amount_cents * bps + 5_000) // 10_000


@dataclass(frozen=True, slots=True)
class RegionPolicy:
    region: str
    diamonds_per_coin: Fraction
    diamond_value_micro_usd: int
    thresholds_cents: dict[str, int]  # account status -> minimum withdrawal (every eligible status has one)
    daily_cap_cents: int
    payout_method: str  # the method of a creator without an account record
    fees: dict[str, Fee]  # payout method -> its fee (the methods an account of the region may choose)
    eligible: bool  # gifts can be withdrawn in this region at all
    service_fee_bps: int  # the platform's service fee on a payout
    min_age: int  # an account younger than this is not eligible

    @property
    def milli_diamonds_per_coin(self) -> int:
        return int(self.diamonds_per_coin * MILLI)

    def threshold_milli(self, status: str) -> int | None:
        """Smallest balance whose value reaches the threshold of an account of this status; None when such an
        account never gets a notice (the region or the status is not eligible)."""
        cents = self.thresholds_cents.get(status) if self.eligible else None
        if cents is None:
            return None
        need = cents * MICRO_USD_PER_CENT * MILLI
        return max(1, -(-need // self.diamond_value_micro_usd))

    def value_cents(self, milli_diamonds: int) -> int:
        """The balance's value in cents, rounded half up."""
        unit = MILLI * MICRO_USD_PER_CENT
        return (2 * milli_diamonds * self.diamond_value_micro_usd + unit) // (2 * unit)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A window family on event time: tumbling when hop == size."""

    name: str
    size_ms: int
    hop_ms: int


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    regions: dict[str, RegionPolicy]
    statuses: dict[str, bool]  # account status -> eligible for payouts (CLOSED is never one of them)
    missing_status: str  # the status of a creator without an account record
    default_region: str | None  # the region of a gift without one, for a creator without an account record
    windows: tuple[WindowSpec, ...]
    grace_ms: int
    streak_timeout_ms: int
    dedupe_horizon_ms: int
    max_future_ms: int
    max_record_bytes: int
    source: str

    def threshold_milli(self, region: str, status: str, age: int | None = None) -> int | None:
        """The threshold of a creator in `region` with `status` (the missing status when it has no account, and
        then no age to check); None: no notice while so."""
        rp = self.regions[region]
        if not self.statuses.get(status, False) or (age is not None and age < rp.min_age):
            return None
        return rp.threshold_milli(status)

    def cannot_price(self, priced: PricedIn) -> list[str]:
        """What of a partition's state (kept from an older policy) this policy cannot price, in words; empty when
        it can. An open streak credits its coins at its region's rate when it closes, and an account's notice
        charges its method's fee in its region: without them the engine cannot go on (a region of accounts alone
        is fine: their gifts are dead-lettered `account_region` until a newer account record)."""
        problems = [f"open streaks priced in region {r!r}, which policy {self.version} does not have"
                    for r in sorted(priced.streak_regions - self.regions.keys())]
        for region, method in sorted(priced.account_methods):
            rp = self.regions.get(region)
            if rp is not None and method not in rp.fees:
                problems.append(f"accounts in {region} paid by {method!r}, which policy {self.version} does not "
                                f"offer there")
        return problems

    @property
    def pane_ms(self) -> int:
        """Greatest common step of all windows: one tally per pane serves every window."""
        return math.gcd(*(w.size_ms for w in self.windows), *(w.hop_ms for w in self.windows))


DEFAULT_WINDOWS = {"tumbling": ["1h", "1d"], "hopping": [{"size": "1h", "hop": "5m"}], "grace": "5m"}


def parse_duration(text: Any) -> int:
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"must be a duration like '5m', '30s', '1h', '250ms', got {text!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


class _Checker:
    """Collects every problem so the operator fixes the file in one go."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def int_(self, data: dict, key: str, path: str, lo: int = 0, hi: int | None = None) -> int:
        v = data.get(key)
        if type(v) is not int:  # bool is an int subclass; floats are refused for money
            self.fail(f"{path}{key}", f"must be an integer, got {v!r}")
            return lo
        if v < lo or (hi is not None and v > hi):
            self.fail(f"{path}{key}", f"must be in [{lo}, {hi if hi is not None else '∞'}], got {v}")
        return v

    def duration(self, data: dict, key: str, path: str, default: str) -> int:
        try:
            return parse_duration(data.get(key, default))
        except ValueError as e:
            self.fail(f"{path}{key}", str(e))
            return 1


def _parse_rate(text: Any) -> Fraction:
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"must be a string like '1', '1/2' or '2', got {text!r}")
    try:
        rate = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"must be an integer or rational 'n/d', got {text!r}") from None
    if rate <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    if (rate * MILLI).denominator != 1:
        raise ValueError(f"must be a multiple of 1/1000 so credits stay whole milli-diamonds, got {text!r}")
    return rate


def _thresholds(chk: _Checker, merged: dict, path: str, statuses: dict[str, bool]) -> dict[str, int]:
    """threshold_cents: one integer for every status, or a table status -> cents (a region's table is laid over
    the defaults'); each eligible status needs one."""
    raw = merged.get("threshold_cents")
    if type(raw) is int:
        raw = dict.fromkeys(statuses, raw)
    if not isinstance(raw, dict):
        chk.fail(f"{path}threshold_cents", f"must be an integer or a table of account statuses, got {raw!r}")
        return {}
    out: dict[str, int] = {}
    for status in raw:
        if status not in statuses:
            chk.fail(f"{path}threshold_cents.{status}", f"is not an account status {sorted(statuses)}")
            continue
        out[status] = chk.int_(raw, status, f"{path}threshold_cents.")
    for status in sorted(s for s, eligible in statuses.items() if eligible and s not in out):
        chk.fail(f"{path}threshold_cents", f"needs a threshold for the eligible status {status!r}")
    return out


def _region(chk: _Checker, name: str, merged: dict, path: str, statuses: dict[str, bool]) -> RegionPolicy:
    for key in sorted(set(merged) - _REGION_KEYS):
        chk.fail(f"{path}{key}", "unknown setting")
    try:
        rate = _parse_rate(merged.get("diamonds_per_coin"))
    except ValueError as e:
        chk.fail(f"{path}diamonds_per_coin", str(e))
        rate = Fraction(1)
    fees: dict[str, Fee] = {}
    raw_fees = merged.get("fees")
    if not isinstance(raw_fees, dict) or not raw_fees:
        chk.fail(f"{path}fees", "must be a table with at least one payout method")
        raw_fees = {}
    for method, fee in raw_fees.items():
        if not isinstance(fee, dict):
            chk.fail(f"{path}fees.{method}", "must be a table {fixed_cents, rate_bps}")
            continue
        for key in sorted(set(fee) - {"fixed_cents", "rate_bps"}):
            chk.fail(f"{path}fees.{method}.{key}", "unknown setting")
        fees[method] = Fee(
            chk.int_(fee, "fixed_cents", f"{path}fees.{method}."),
            chk.int_(fee, "rate_bps", f"{path}fees.{method}.", 0, 10_000),
        )
    method = merged.get("payout_method")
    if not isinstance(method, str) or method not in fees:
        chk.fail(f"{path}payout_method", f"must name one of the fees tables {sorted(fees)}, got {method!r}")
    eligible = merged.get("eligible", True)
    if not isinstance(eligible, bool):
        chk.fail(f"{path}eligible", f"must be true or false, got {eligible!r}")
    return RegionPolicy(
        region=name,
        diamonds_per_coin=rate,
        diamond_value_micro_usd=chk.int_(merged, "diamond_value_micro_usd", path, 1),
        thresholds_cents=_thresholds(chk, merged, path, statuses),
        daily_cap_cents=chk.int_(merged, "daily_cap_cents", path),
        payout_method=method if isinstance(method, str) else "",
        fees=fees,
        eligible=bool(eligible),
        service_fee_bps=chk.int_({"service_fee_bps": 0, **merged}, "service_fee_bps", path, 0, 10_000),
        min_age=chk.int_({"min_age": 0, **merged}, "min_age", path, 0, 150),
    )


def _windows(chk: _Checker, raw: Any) -> tuple[tuple[WindowSpec, ...], int]:
    if not isinstance(raw, dict):
        chk.fail("windows", "must be a table")
        raw = DEFAULT_WINDOWS
    for key in sorted(set(raw) - {"tumbling", "hopping", "grace"}):
        chk.fail(f"windows.{key}", "unknown setting")
    specs: list[WindowSpec] = []
    for i, size in enumerate(raw.get("tumbling", [])):
        try:
            ms = parse_duration(size)
            specs.append(WindowSpec(f"tumbling-{format_duration(ms)}", ms, ms))
        except ValueError as e:
            chk.fail(f"windows.tumbling[{i}]", str(e))
    for i, hop in enumerate(raw.get("hopping", [])):
        try:
            size_ms, hop_ms = parse_duration(hop.get("size")), parse_duration(hop.get("hop"))
        except (ValueError, AttributeError) as e:
            chk.fail(f"windows.hopping[{i}]", f"needs size and hop durations: {e}")
            continue
        if size_ms % hop_ms:
            chk.fail(f"windows.hopping[{i}]", "size must be a multiple of hop")
        specs.append(WindowSpec(f"hopping-{format_duration(size_ms)}-{format_duration(hop_ms)}", size_ms, hop_ms))
    if not specs:
        chk.fail("windows", "needs at least one tumbling or hopping window")
        specs.append(WindowSpec("tumbling-1h", 3_600_000, 3_600_000))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        chk.fail("windows", f"duplicate windows {names}")
    return tuple(specs), chk.duration(raw, "grace", "windows.", "5m")


def _statuses(chk: _Checker, raw: Any) -> dict[str, bool]:
    """[account_statuses]: name -> {eligible = bool}. CLOSED is reserved (a tombstone's status)."""
    if not isinstance(raw, dict) or not raw:
        chk.fail("account_statuses", "must be a table naming at least one status")
        return {DEFAULT_STATUS: True}
    out: dict[str, bool] = {}
    for name, spec in raw.items():
        path = f"account_statuses.{name}"
        if not _STATUS.match(name) or name == CLOSED:
            chk.fail(path, f"a status is [a-z][a-z0-9_]{{0,31}} and not {CLOSED!r} (reserved for closed accounts)")
        if not isinstance(spec, dict) or set(spec) - {"eligible"} or not isinstance(spec.get("eligible"), bool):
            chk.fail(path, "must be a table {eligible = true|false}")
            continue
        out[name] = spec["eligible"]
    return out or {DEFAULT_STATUS: True}


def _accounts(chk: _Checker, raw: Any, statuses: dict[str, bool],
              regions: dict[str, RegionPolicy]) -> tuple[str, str | None]:
    """[accounts]: missing_status (default: the only status, or "standard") and default_region (optional)."""
    if not isinstance(raw, dict):
        chk.fail("accounts", "must be a table")
        raw = {}
    for key in sorted(set(raw) - {"missing_status", "default_region"}):
        chk.fail(f"accounts.{key}", "unknown setting")
    fallback = next(iter(statuses)) if len(statuses) == 1 else DEFAULT_STATUS
    missing = raw.get("missing_status", fallback)
    if not isinstance(missing, str) or missing not in statuses:
        chk.fail("accounts.missing_status", f"must name one of the account statuses {sorted(statuses)}, "
                                            f"got {missing!r}")
    region = raw.get("default_region")
    if region is not None and (not isinstance(region, str) or region not in regions):
        chk.fail("accounts.default_region", f"must name one of the regions, got {region!r}")
    return (missing if isinstance(missing, str) else fallback), (region if isinstance(region, str) else None)


def parse_policy(data: dict[str, Any], source: str = "<policy>") -> Policy:
    chk = _Checker()
    known = {"policy_version", "currency", "defaults", "regions", "windows", "streaks", "limits",
             "account_statuses", "accounts"}
    for key in sorted(set(data) - known):
        chk.fail(key, "unknown setting")
    version = data.get("policy_version")
    if not isinstance(version, str) or not version.strip():
        chk.fail("policy_version", "must be a non-empty string")
        version = ""
    if data.get("currency", "USD") != "USD":
        chk.fail("currency", "only USD is supported")
    defaults = data.get("defaults")
    if not isinstance(defaults, dict):
        chk.fail("defaults", "must be a table with the settings every region inherits")
        defaults = {}
    raw_regions = data.get("regions", {})
    if not isinstance(raw_regions, dict) or not raw_regions:
        chk.fail("regions", "must list at least one region (events for unlisted regions are rejected)")
        raw_regions = {}
    statuses = _statuses(chk, data.get("account_statuses", {DEFAULT_STATUS: {"eligible": True}}))
    regions: dict[str, RegionPolicy] = {}
    for name, overrides in raw_regions.items():
        if not _REGION.match(name):
            chk.fail(f"regions.{name}", "region must be an ISO 3166 alpha-2 code like 'US'")
        if not isinstance(overrides, dict):
            chk.fail(f"regions.{name}", "must be a table")
            continue
        merged = {**defaults, **overrides}
        merged["fees"] = {**defaults.get("fees", {}), **overrides.get("fees", {})}
        base, own = defaults.get("threshold_cents"), overrides.get("threshold_cents")
        if isinstance(own, dict) and isinstance(base, dict | int) and type(base) is not bool:
            merged["threshold_cents"] = {**(base if isinstance(base, dict) else dict.fromkeys(statuses, base)), **own}
        regions[name] = _region(chk, name, merged, f"regions.{name}.", statuses)
    missing_status, default_region = _accounts(chk, data.get("accounts", {}), statuses, regions)
    windows, grace_ms = _windows(chk, data.get("windows", DEFAULT_WINDOWS))
    streaks = data.get("streaks", {})
    limits = data.get("limits", {})
    for section, raw, keys in (("streaks", streaks, {"timeout"}),
                               ("limits", limits, {"dedupe_horizon", "max_future", "max_record_bytes"})):
        if not isinstance(raw, dict):
            chk.fail(section, "must be a table")
            continue
        for key in sorted(set(raw) - keys):
            chk.fail(f"{section}.{key}", "unknown setting")
    streaks = streaks if isinstance(streaks, dict) else {}
    limits = limits if isinstance(limits, dict) else {}
    policy = Policy(
        version=version,
        regions=regions,
        statuses=statuses,
        missing_status=missing_status,
        default_region=default_region,
        windows=windows,
        grace_ms=grace_ms,
        streak_timeout_ms=chk.duration(streaks, "timeout", "streaks.", "30s"),
        dedupe_horizon_ms=chk.duration(limits, "dedupe_horizon", "limits.", "2h"),
        max_future_ms=chk.duration(limits, "max_future", "limits.", "1h"),
        max_record_bytes=chk.int_({"max_record_bytes": 65_536, **limits}, "max_record_bytes", "limits.", 256),
        source=source,
    )
    if windows and policy.dedupe_horizon_ms < policy.grace_ms:
        chk.fail("limits.dedupe_horizon", "must be at least windows.grace")
    if chk.problems:
        raise PolicyError(f"invalid policy {source}:\n  " + "\n  ".join(chk.problems))
    return policy


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; None loads the policy shipped with the package."""
    if path is None:
        text = resources.files("stream.data").joinpath("policy.default.toml").read_text()
        source = "<built-in default policy>"
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"invalid policy {source}: not valid TOML: {e}") from None
    return parse_policy(data, source)
