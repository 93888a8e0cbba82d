"""Configuration a Flask user can trust: typed values in app.config, every
environment source with one precedence, wrong units refused, no pasteable tokens."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from flask_resilience import Resilience
from flask_resilience import config as cfg
from flask_resilience.state import get_state
from tests.conftest import MakeApp


def test_app_config_holds_the_parsed_value_after_init_app(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_ENABLED", "false")
    monkeypatch.setenv("AUDIT_BUFFER_SIZE", "250")
    app, _ = make_app(RESILIENCE_HEALTH_PUBLIC="yes", RESILIENCE_AUDIT_REDACT_KEYS="ssn, iban")
    assert app.config["RESILIENCE_CACHE_ENABLED"] is False
    assert app.config["RESILIENCE_AUDIT_BUFFER_SIZE"] == 250
    assert app.config["RESILIENCE_HEALTH_PUBLIC"] is True
    assert app.config["RESILIENCE_AUDIT_REDACT_KEYS"] == ("ssn", "iban")


def test_prefixed_environment_variables_are_read_as_flask_does(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESILIENCE_CACHE_DEFAULT_TTL", "77")
    monkeypatch.setenv("RESILIENCE_KEY_PREFIX", "from-env:")
    monkeypatch.setenv("RESILIENCE_BREAKER_DEFAULTS", '{"failure_threshold": 3}')
    app, extension = make_app()
    config = get_state(app).config
    assert config[cfg.CACHE_DEFAULT_TTL] == 77
    assert config[cfg.BREAKER_DEFAULTS] == {"failure_threshold": 3}
    assert extension.circuit_breaker("env-defaults").config.failure_threshold == 3


def test_precedence_option_then_app_config_then_prefixed_env_then_seed_env_then_default(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_TTL", "111")
    monkeypatch.setenv("RESILIENCE_CACHE_DEFAULT_TTL", "222")
    app, _ = make_app(Resilience(cache_default_ttl=444), RESILIENCE_CACHE_DEFAULT_TTL=333)
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 444
    app, _ = make_app(RESILIENCE_CACHE_DEFAULT_TTL=333)
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 333
    app, _ = make_app()
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 222
    monkeypatch.delenv("RESILIENCE_CACHE_DEFAULT_TTL")
    app, _ = make_app()
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 111
    monkeypatch.delenv("CACHE_TTL")
    app, _ = make_app()
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 300


def test_seed_environment_can_be_turned_off(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_TTL", "111")
    app, _ = make_app(RESILIENCE_READ_SEED_ENV=False)
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 300
    monkeypatch.setenv("RESILIENCE_READ_SEED_ENV", "false")
    app, _ = make_app()
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 300


def test_an_invalid_prefixed_variable_names_its_source(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESILIENCE_AUDIT_BUFFER_SIZE", "lots")
    with pytest.raises(ValueError, match="environment variable RESILIENCE_AUDIT_BUFFER_SIZE"):
        make_app()


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("RESILIENCE_CACHE_DEFAULT_TTL", "Infinity"),
        ("RESILIENCE_AUDIT_BUFFER_SIZE", "NaN"),
        ("RESILIENCE_REDIS_SOCKET_TIMEOUT", "Infinity"),
        ("RESILIENCE_AUDIT_FLUSH_INTERVAL", "inf"),
    ],
)
def test_a_non_finite_number_names_its_variable(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    # JSON in the environment reads "Infinity" and "NaN" as floats: a key
    # that holds one is refused like any other junk, naming the variable.
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=f"environment variable {variable}"):
        make_app()


def test_a_string_setting_keeps_an_environment_value_that_reads_as_a_json_number(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "12345678901234567890123"
    monkeypatch.setenv("RESILIENCE_ADMIN_TOKEN", token)
    monkeypatch.setenv("RESILIENCE_AUDIT_HMAC_KEY", "1e999")
    app, _ = make_app()
    assert app.config["RESILIENCE_ADMIN_TOKEN"] == token
    assert app.config["RESILIENCE_AUDIT_HMAC_KEY"] == "1e999"


def test_breaker_defaults_in_milliseconds_are_refused_with_a_hint(make_app: MakeApp) -> None:
    with pytest.raises(ValueError, match="seconds, not milliseconds"):
        make_app(RESILIENCE_BREAKER_DEFAULTS={"timeout": 60000})


def test_a_documented_example_token_warns(make_app: MakeApp, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        make_app(RESILIENCE_ADMIN_TOKEN="change-me-to-a-long-random-token")
    assert any("example" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        make_app(RESILIENCE_ADMIN_TOKEN=secrets.token_urlsafe(32))
    assert not any("ADMIN_TOKEN" in record.getMessage() for record in caplog.records)


def test_the_docs_generate_the_admin_token_and_print_none() -> None:
    root = Path(__file__).parent.parent
    assert "secrets.token_urlsafe(32)" in (root / "docs" / "quickstart.rst").read_text()
    for path in [root / "README.rst", *(root / "docs").glob("*.rst")]:
        for token in cfg.EXAMPLE_ADMIN_TOKENS:
            assert token not in path.read_text(), path
