"""The canonical form (a test vector for other languages), keys, rotation,
checkpoint stores and sinks, purge's dry run."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import ColumnElement, func, select, update

from flask_resilience import Resilience
from flask_resilience.audit import cli as audit_cli
from flask_resilience.audit.chain import GENESIS, HASHED, Chain, canonical, link_hash
from flask_resilience.audit.events import AuditEntry
from flask_resilience.audit.intake import entry_row
from flask_resilience.audit.keys import Keyring, derive_key, hkdf_sha256, key_id
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_checkpoint, audit_log
from flask_resilience.audit.verify import Context, _check_chain
from tests.conftest import MakeApp
from tests.test_audit_tamper import rows_of, verify, write_entries

VECTOR_ROW: dict[str, Any] = {
    "id": "7d0f6c1e-52c4-4e0a-9a51-3f1c2b9e8d47",
    "chain_id": "0b3c7a52-9e1f-4f7e-8a3b-5c6d7e8f9a0b",
    "seq": 2,
    "occurred_at": datetime(2026, 11, 30, 8, 15, 0, 123456),
    "logged_at": datetime(2026, 11, 30, 8, 15, 1),
    "event_type": "UPDATE",
    "severity": "INFO",
    "status": "SUCCESS",
    "user_id": "42",
    "user_email": None,
    "resource": "fare",
    "resource_id": "7",
    "method": "PUT",
    "path": "/fares/7",
    "endpoint": "fares.update",
    "http_status": 200,
    "ip": "203.0.113.9",
    "user_agent": "curl/8.5",
    "request_id": "req-1",
    "changes": {"price": {"old": 10.5, "new": 12}},
    "details": {"note": "café ☕", "b": [1, True, None]},
    "message": None,
}
VECTOR_CANONICAL = (
    '["7d0f6c1e-52c4-4e0a-9a51-3f1c2b9e8d47","0b3c7a52-9e1f-4f7e-8a3b-5c6d7e8f9a0b",2,'
    '"2026-11-30T08:15:00.123456","2026-11-30T08:15:01","UPDATE","INFO","SUCCESS","42",null,"fare","7",'
    '"PUT","/fares/7","fares.update",200,"203.0.113.9","curl/8.5","req-1",{"price":{"new":12,"old":10.5}},'
    '{"b":[1,true,null],"note":"caf\\u00e9 \\u2615"},null]'
)


def test_canonical_form_test_vector() -> None:
    """The worked example in docs/audit.rst: a verifier in any language must get these bytes and hashes."""
    assert canonical(VECTOR_ROW) == VECTOR_CANONICAL.encode()
    data = GENESIS.encode() + VECTOR_CANONICAL.encode()
    unkeyed = "3e602d77bfdcf750841917288ed55269594d931cbb7a5c5f37aad7b441a3e408"
    keyed = "109a4d54062bf2642c2986cb7d41cc9fe0f6884a4b36d1a133fe22b55dd055db"
    assert hashlib.sha256(data).hexdigest() == unkeyed == link_hash(GENESIS, VECTOR_ROW, None)
    assert hmac.new(b"test-key", data, hashlib.sha256).hexdigest() == keyed
    assert link_hash(GENESIS, VECTOR_ROW, b"test-key") == keyed


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42, bytes(range(13)))
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_default_key_is_derived_from_secret_key(make_app: MakeApp) -> None:
    app, _ = make_app()
    chain = AppAudit.of(app).writer.chain
    assert chain.key == derive_key("test-secret-key")
    assert chain.key_id == key_id(derive_key("test-secret-key")) == "6cd60d341c2bd2b6"


def test_init_app_warns_when_unkeyed_outside_debug_and_testing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        Resilience(Flask("keyed", instance_path="/nonexistent")).shutdown()
        keyed = Flask("keyed2", instance_path="/nonexistent")
        keyed.config["SECRET_KEY"] = "s"
        Resilience(keyed).shutdown()
        testing = Flask("testing", instance_path="/nonexistent")
        testing.config["TESTING"] = True
        Resilience(testing).shutdown()
    warnings = [record for record in caplog.records if "not keyed" in record.getMessage()]
    assert len(warnings) == 1


@pytest.fixture
def sqlite_audit(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def test_rotation_keeps_old_entries_verifiable(make_app: MakeApp, sqlite_audit: str) -> None:
    old, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, RESILIENCE_AUDIT_HMAC_KEY="old-key")
    write_entries(old, 3)
    extension.shutdown()
    rotated, extension = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit,
        RESILIENCE_AUDIT_HMAC_KEY="new-key",
        RESILIENCE_AUDIT_PREVIOUS_HMAC_KEYS="old-key",
    )
    write_entries(rotated, 3)
    extension.shutdown()
    result = verify(rotated)
    assert result.exit_code == 0, result.output
    assert "2 chains checked, all intact" in result.output
    forgetful, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, RESILIENCE_AUDIT_HMAC_KEY="new-key")
    result = verify(forgetful)
    assert result.exit_code == 1
    assert "BROKEN at seq 1" in result.output and "FORGED checkpoint" in result.output


def test_secret_key_fallbacks_verify_entries_of_the_previous_secret(
    make_app: MakeApp, sqlite_audit: str
) -> None:
    before, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, SECRET_KEY="first")
    write_entries(before, 2)
    extension.shutdown()
    after, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, SECRET_KEY="second", SECRET_KEY_FALLBACKS=["first"]
    )
    result = verify(after)
    assert result.exit_code == 0, result.output


def test_checkpoints_go_to_a_second_database_and_a_sink(
    make_app: MakeApp, sqlite_audit: str, tmp_path: Path
) -> None:
    shipped: list[dict[str, Any]] = []
    second = f"sqlite:///{tmp_path / 'checkpoints.db'}"
    app, extension = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit,
        RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI=second,
        RESILIENCE_AUDIT_CHECKPOINT_SINK=shipped.append,
        RESILIENCE_AUDIT_CHECKPOINT_INTERVAL=4,
    )
    write_entries(app, 3)  # CHAIN_OPENED + 3: the opening checkpoint at seq 4
    write_entries(app, 4)  # seq 8: four more
    write_entries(app, 1)  # not due
    chain_id = AppAudit.of(app).writer.chain.chain_id
    extension.shutdown()  # CHAIN_CLOSED at seq 10, closing checkpoint
    assert [(item["seq"], item["closing"]) for item in shipped] == [(4, False), (8, False), (10, True)]
    assert all(item["chain_id"] == chain_id and len(item["signature"]) == 64 for item in shipped)
    stored = sqlalchemy.create_engine(second)
    with stored.connect() as connection:
        assert connection.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one() == 3
    main = sqlalchemy.create_engine(sqlite_audit)
    with main.connect() as connection:
        assert connection.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one() == 0
    checker, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI=second
    )
    assert verify(checker).exit_code == 0
    with stored.begin() as connection:  # a checkpoint re-signed without the key
        connection.execute(
            update(audit_checkpoint).where(audit_checkpoint.c.seq == 10).values(signature="0" * 64)
        )
    result = verify(checker)
    assert result.exit_code == 1
    assert "FORGED checkpoint at seq 10" in result.output
    stored.dispose()
    main.dispose()


def aged_chain(
    make_app: MakeApp, url: str, count: int, aged: ColumnElement[bool]
) -> tuple[str, sqlalchemy.Engine]:
    """A closed chain of ``count`` entries whose ``aged`` rows date from 2020."""
    app, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=url)
    write_entries(app, count)
    chain_id = AppAudit.of(app).writer.chain.chain_id
    extension.shutdown()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        aged_at = datetime(2020, 1, 1)  # logged then too: purge cuts by the writer's logged_at
        connection.execute(update(audit_log).where(aged).values(occurred_at=aged_at, logged_at=aged_at))
    return chain_id, engine


def test_purge_dry_run_lists_per_chain_and_deletes_nothing(
    make_app: MakeApp, sqlite_audit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain_id, engine = aged_chain(make_app, sqlite_audit, 5, audit_log.c.seq <= 3)
    checker, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit)
    runner = checker.test_cli_runner()
    dry = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"chain {chain_id}: 3 entries (seq 1-3)" in dry.output
    assert len(rows_of(engine)) == 7
    monkeypatch.setattr(audit_cli, "interactive", lambda: True)  # a person at a terminal
    declined = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d"], input="n\n")
    assert declined.exit_code == 1 and "delete them?" in declined.output
    assert len(rows_of(engine)) == 7
    confirmed = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"])
    assert "deleted 3 entries" in confirmed.output
    result = verify(checker)
    assert result.exit_code == 0, result.output
    engine.dispose()


def test_a_chain_purged_whole_still_verifies(make_app: MakeApp, sqlite_audit: str) -> None:
    chain_id, engine = aged_chain(make_app, sqlite_audit, 3, sqlalchemy.true())
    checker, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit)
    runner = checker.test_cli_runner()
    assert (
        "deleted 5 entries"
        in runner.invoke(args=["resilience", "audit", "purge", "--older-than", "1d"]).output
    )
    result = verify(checker)
    assert result.exit_code == 0, result.output
    assert f"chain {chain_id}: ok (0 entries" in result.output and "purged whole" in result.output
    engine.dispose()


def test_entries_written_unkeyed_fail_a_keyed_verify_unless_allowed(
    make_app: MakeApp, sqlite_audit: str
) -> None:
    unkeyed, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, SECRET_KEY=None)
    write_entries(unkeyed, 2)
    extension.shutdown()
    keyed, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit)
    runner = keyed.test_cli_runner()
    assert "BROKEN at seq 1" in runner.invoke(args=["resilience", "audit", "verify"]).output
    allowed = runner.invoke(args=["resilience", "audit", "verify", "--allow-unkeyed"])
    assert allowed.exit_code == 0, allowed.output
    alone, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=sqlite_audit, SECRET_KEY=None)
    unkeyed_verify = alone.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert unkeyed_verify.exit_code == 0
    assert "warning: the log is unkeyed" in unkeyed_verify.output


def _linked_rows(count: int, key: bytes) -> list[dict[str, Any]]:
    chain = Chain(key)
    now = datetime(2026, 11, 30, 8, 0, 0)
    return [
        chain.link(
            entry_row(AuditEntry(event_type="UPDATE", resource_id=str(index), details={"n": index}), now)
        )
        for index in range(count)
    ]


@given(
    position=st.integers(min_value=0, max_value=5),
    field=st.sampled_from([name for name in HASHED if name not in ("chain_id", "seq")]),
    value=st.one_of(
        st.text(max_size=20), st.integers(), st.none(), st.dictionaries(st.text(max_size=5), st.integers())
    ),
)
@settings(max_examples=150, deadline=None)
def test_any_edit_of_any_hashed_field_breaks_the_chain(position: int, field: str, value: Any) -> None:
    key = derive_key("property")
    rows = _linked_rows(6, key)
    if rows[position][field] == value:
        return  # not an edit
    rows[position] = {**rows[position], field: value}
    context = Context(Keyring.of(key), {}, datetime(2026, 12, 1), timedelta(minutes=2))
    report = _check_chain(rows[0]["chain_id"], rows, [], context)
    assert report.broken_at == rows[position]["seq"]
