"""What the code emits conforms to the JSON Schemas in schemas/ (the contract), on the bundled session."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream.cli import _default_session
from stream.engine import model
from stream.kafka.session_files import read_session
from stream.runtime.replay import replay

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


@pytest.fixture(scope="module")
def demo(policy):
    return replay(read_session(_default_session()), policy, partitions=6, final=True)


@pytest.mark.parametrize(("schema", "attr"), [("payout-notice", "notices"), ("window-total", "window_totals"),
                                              ("late-gift", "late"), ("dead-letter", "dead_letters")])
def test_every_output_record_validates(demo, schema, attr):
    records = getattr(demo.outputs, attr)
    assert records, f"the demo session produces {attr}"
    v = validator(schema)
    for r in records:
        errors = list(v.iter_errors(orjson.loads(model.encode(r))))
        assert not errors, (r, errors[0].message)


def test_the_accepted_input_of_the_demo_session_validates(policy):
    v = validator("gift-event")
    accepted = [r for r in read_session(_default_session()) if type(model.decode_event(r)) is model.GiftEvent]
    assert len(accepted) > 19_000
    for raw in accepted[:5_000]:
        assert not list(v.iter_errors(orjson.loads(raw)))


def test_notice_money_adds_up(demo):
    for n in demo.outputs.notices:
        assert n.payable_cents == min(n.gross_cents, n.daily_cap_cents)
        assert n.service_fee_cents == (n.payable_cents * n.service_fee_bps + 5_000) // 10_000  # half up
        assert n.net_cents == n.payable_cents - n.service_fee_cents - n.method_fee_cents >= 0
        assert n.gross_cents >= n.threshold_cents
        assert (n.trigger, n.trigger_event_id is not None) == ("gift", True)  # the demo session has no accounts


def test_the_outputs_of_a_session_with_accounts_validate(policy):
    """Account-triggered notices (trigger_event_id null) and the dead letters of creator-accounts records."""
    from tests.support.schema_examples import run

    out = run(policy)
    assert {n.trigger for n in out.notices} == {"gift", "account"}
    assert {d.source_topic for d in out.dead_letters} == {"creator-accounts"}
    for schema, records in (("payout-notice", out.notices), ("dead-letter", out.dead_letters)):
        v = validator(schema)
        for r in records:
            errors = list(v.iter_errors(orjson.loads(model.encode(r))))
            assert not errors, (r, errors[0].message)
