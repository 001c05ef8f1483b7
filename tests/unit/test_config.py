"""Worker settings: precedence, types, unknown keys, and a --help line for every setting."""

from __future__ import annotations

from dataclasses import fields

import pytest

from stream.config import SETTING_HELP, WorkerConfig, load_config, settings_help


def test_precedence_defaults_file_environment_flags(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('group_id = "from-file"\nbatch_max_records = 10\n[topics]\ngifts = "g2"\n')
    env = {"GIFTSTREAM_BATCH_MAX_RECORDS": "20", "GIFTSTREAM_EXACTLY_ONCE": "false"}
    cfg = load_config(path, env=env, bootstrap_servers="h:1")
    assert (cfg.group_id, cfg.batch_max_records, cfg.exactly_once) == ("from-file", 20, False)
    assert (cfg.bootstrap_servers, cfg.topics.gifts, cfg.topics.notices) == ("h:1", "g2", "payout-notices")


def test_bad_settings_are_named(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text("batch_max_recordz = 10\n")
    with pytest.raises(ValueError, match="batch_max_recordz: unknown setting"):
        load_config(path, env={})
    with pytest.raises(ValueError, match="GIFTSTREAM_HTTP_PORT: expected an integer"):
        load_config(env={"GIFTSTREAM_HTTP_PORT": "eighty"})


def test_every_setting_is_explained_and_the_password_is_not_shown():
    assert set(SETTING_HELP) == {f.name for f in fields(WorkerConfig)}
    text = settings_help()
    assert all(f"GIFTSTREAM_{f.name.upper()}" in text for f in fields(WorkerConfig) if f.name != "topics")
    assert "hunter2" not in repr(WorkerConfig(sasl_password="hunter2"))


def test_dump_config_reads_back_to_the_same_settings(tmp_path):
    from stream.config import Topics, dump_config

    cfg = WorkerConfig(bootstrap_servers="h:1", group_id='g "quoted"', exactly_once=False, batch_max_ms=7,
                       sasl_mechanism="SCRAM-SHA-256", topics=Topics(gifts="g-x"))
    path = tmp_path / "w.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path, env={}) == cfg
