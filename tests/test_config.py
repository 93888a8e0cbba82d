"""The configuration table: precedence, seed aliases, validation."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_resilience import Resilience, validators
from flask_resilience import config as cfg
from flask_resilience.state import get_state
from tests.conftest import MakeApp

SEED_ALIASES = {
    "CIRCUIT_BREAKER_ENABLED": ("RESILIENCE_BREAKER_ENABLED", "false", False),
    "CACHE_ENABLED": ("RESILIENCE_CACHE_ENABLED", "0", False),
    "CACHE_TTL": ("RESILIENCE_CACHE_DEFAULT_TTL", "120", 120),
    "ENABLE_AUDIT_LOGGING": ("RESILIENCE_AUDIT_ENABLED", "False", False),
    "AUDIT_BUFFER_SIZE": ("RESILIENCE_AUDIT_BUFFER_SIZE", "250", 250),
    "AUDIT_FLUSH_INTERVAL": ("RESILIENCE_AUDIT_FLUSH_INTERVAL", "1500", 1500),
    "IDEMPOTENCY_TTL": ("RESILIENCE_IDEMPOTENCY_TTL", "3600", 3600),
    "IDEMPOTENCY_AUTO_GENERATE": ("RESILIENCE_IDEMPOTENCY_AUTO_GENERATE", "1", True),
}


def _setting(key: str) -> cfg.Setting[Any]:
    return next(s for s in cfg.SETTINGS if s.key == key)


def test_every_seed_alias_is_in_the_table() -> None:
    assert {s.env for s in cfg.SETTINGS if s.env} == set(SEED_ALIASES)


@pytest.mark.parametrize("env_name", sorted(SEED_ALIASES))
def test_seed_environment_variable_is_read(
    env_name: str, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, raw, parsed = SEED_ALIASES[env_name]
    monkeypatch.setenv(env_name, raw)
    app, _ = make_app()
    assert get_state(app).config[_setting(key)] == parsed
    assert app.config[key] == parsed  # typed, not the raw string


def test_defaults_apply_with_setdefault(make_app: MakeApp) -> None:
    app, _ = make_app()
    for setting in cfg.SETTINGS:
        assert setting.key in app.config
    assert get_state(app).config[cfg.IDEMPOTENCY_TTL] == 86400
    assert get_state(app).config[cfg.AUDIT_BUFFER_SIZE] == 100
    assert get_state(app).config[cfg.HEALTH_PREFIX] == "/api/health"


def test_precedence_constructor_then_app_config_then_env_then_default(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_TTL", "111")
    app, _ = make_app(Resilience(cache_default_ttl=333), RESILIENCE_CACHE_DEFAULT_TTL=222)
    assert get_state(app).config[cfg.CACHE_DEFAULT_TTL] == 333
    assert app.config["RESILIENCE_CACHE_DEFAULT_TTL"] == 333

    app, _ = make_app(RESILIENCE_CACHE_DEFAULT_TTL=222)
    assert get_state(app).config[cfg.CACHE_DEFAULT_TTL] == 222

    app, _ = make_app()
    assert get_state(app).config[cfg.CACHE_DEFAULT_TTL] == 111

    monkeypatch.delenv("CACHE_TTL")
    app, _ = make_app()
    assert get_state(app).config[cfg.CACHE_DEFAULT_TTL] == 300


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
        (True, True),
        (0, False),
    ],
)
def test_boolean_parsing(raw: object, expected: bool) -> None:
    assert validators.boolean(raw) is expected


INVALID_VALUES: list[tuple[str, object]] = [
    ("RESILIENCE_AUDIT_BUFFER_SIZE", "abc"),
    ("RESILIENCE_AUDIT_BUFFER_SIZE", 0),
    ("RESILIENCE_AUDIT_BUFFER_SIZE", 2.5),
    ("RESILIENCE_AUDIT_FLUSH_INTERVAL", -5),
    ("RESILIENCE_CACHE_DEFAULT_TTL", -1),
    ("RESILIENCE_CACHE_DEFAULT_TTL", True),
    ("RESILIENCE_IDEMPOTENCY_TTL", "forever"),
    ("RESILIENCE_BREAKER_ENABLED", "maybe"),
    ("RESILIENCE_CACHE_ENABLED", 2),
    ("RESILIENCE_AUDIT_ENABLED", "yes please"),
    ("RESILIENCE_IDEMPOTENCY_ENABLED", None),
    ("RESILIENCE_IDEMPOTENCY_AUTO_GENERATE", "2"),
    ("RESILIENCE_HEALTH_ENABLED", "nope"),
    ("RESILIENCE_HEALTH_PUBLIC", "public"),
    ("RESILIENCE_HEALTH_CRITICAL", 5),
    ("RESILIENCE_HEALTH_SHOW_VERSION", "perhaps"),
    ("RESILIENCE_HEALTH_CHECK_TIMEOUT", 0),
    ("RESILIENCE_READ_SEED_ENV", "sometimes"),
    ("RESILIENCE_REDIS_URL", "http://localhost:6379"),
    ("RESILIENCE_REDIS_URL", 6379),
    ("RESILIENCE_REDIS_CLUSTER", "node-without-port"),
    ("RESILIENCE_REDIS_CLUSTER", ["127.0.0.1:x"]),
    ("RESILIENCE_REDIS_SOCKET_TIMEOUT", 0),
    ("RESILIENCE_REDIS_CONNECT_TIMEOUT", "-1"),
    ("RESILIENCE_KEY_PREFIX", ""),
    ("RESILIENCE_KEY_PREFIX", "app{1}:"),
    ("RESILIENCE_HEALTH_PREFIX", "api/health"),
    ("RESILIENCE_HEALTH_PREFIX", "/api/health/"),
    ("RESILIENCE_ADMIN_TOKEN", "short"),
    ("RESILIENCE_REQUEST_ID_HEADER", "X Request"),
    ("RESILIENCE_PRINCIPAL_LOADER", "no_such_module_xyz:loader"),
    ("RESILIENCE_PRINCIPAL_LOADER", 42),
    ("RESILIENCE_AUDIT_DATABASE_URI", 5),
    ("RESILIENCE_AUDIT_DATABASE_URI", "not a url"),
    ("RESILIENCE_BREAKER_DEFAULTS", "failure_threshold=3"),
    ("RESILIENCE_BREAKER_DEFAULTS", {"failure_threshold": 0}),
    ("RESILIENCE_BREAKER_DEFAULTS", {"timout": 5}),
    ("RESILIENCE_BREAKER_STORAGE", "memcached"),
    ("RESILIENCE_CACHE_L1_MAX_ENTRIES", 0),
    ("RESILIENCE_CACHE_L1_MAX_BYTES", "lots"),
    ("RESILIENCE_CACHE_L1_MAX_TTL", -1),
    ("RESILIENCE_CACHE_LOCK_TIMEOUT", 0),
    ("RESILIENCE_CACHE_HONOR_NO_CACHE", "sometimes"),
    ("RESILIENCE_CACHE_FRONT", "sometimes"),
    ("RESILIENCE_CACHE_MAX_BODY_BYTES", -10),
    ("RESILIENCE_CACHE_STORED_HEADERS", ["X-Internal"]),
    ("RESILIENCE_CACHE_DENIED_HEADERS", ["X Bad"]),
    ("RESILIENCE_CACHE_PRIVATE_HEADERS", ["Bad Header"]),
    ("RESILIENCE_CACHE_PRIVATE_COOKIES", [""]),
    ("RESILIENCE_CACHE_WRITE_BEHIND_QUEUE", 0),
    ("RESILIENCE_CACHE_BACKEND", "redis://localhost"),
    ("RESILIENCE_CACHE_SERIALIZER", "pickle"),
    ("RESILIENCE_AUDIT_MAX_QUEUE", 0),
    ("RESILIENCE_AUDIT_SPILL_PATH", 3),
    ("RESILIENCE_AUDIT_SPILL_MAX_BYTES", 0),
    ("RESILIENCE_AUDIT_JOURNAL_FSYNC", "sometimes"),
    ("RESILIENCE_AUDIT_HMAC_KEY", 12345),
    ("RESILIENCE_AUDIT_PREVIOUS_HMAC_KEYS", 7),
    ("RESILIENCE_AUDIT_CHECKPOINT_INTERVAL", 0),
    ("RESILIENCE_AUDIT_CHECKPOINT_SECONDS", -1),
    ("RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI", "not a url"),
    ("RESILIENCE_AUDIT_CHECKPOINT_SINK", "nowhere_module_abc:fn"),
    ("RESILIENCE_AUDIT_PARTITION", "week"),
    ("RESILIENCE_AUDIT_REDACT_KEYS", 7),
    ("RESILIENCE_AUDIT_REDACTOR", "nowhere_module_abc:fn"),
    ("RESILIENCE_AUDIT_MAX_BODY_BYTES", -1),
    ("RESILIENCE_IDEMPOTENCY_LEASE", 0),
    ("RESILIENCE_IDEMPOTENCY_MAX_BODY_BYTES", "big"),
    ("RESILIENCE_IDEMPOTENCY_STORED_HEADERS", ["Bad Header"]),
    ("RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES", -3),
    ("RESILIENCE_IDEMPOTENCY_MEMORY_BYTES", 0),
    ("RESILIENCE_IDEMPOTENCY_ON_ERROR", "retry"),
]


def test_every_key_has_an_invalid_value_test() -> None:
    typed = {s.key for s in cfg.SETTINGS}
    assert {key for key, _ in INVALID_VALUES} == typed


@pytest.mark.parametrize(("key", "value"), INVALID_VALUES)
def test_invalid_value_fails_init_app_naming_key_and_value(key: str, value: object) -> None:
    app = Flask("invalid")
    app.config[key] = value
    with pytest.raises(ValueError, match=key) as excinfo:
        Resilience().init_app(app)
    assert repr(value) in str(excinfo.value)
    assert "resilience" not in app.extensions


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_BUFFER_SIZE", "abc")
    with pytest.raises(ValueError, match=r"RESILIENCE_AUDIT_BUFFER_SIZE='abc'.*AUDIT_BUFFER_SIZE"):
        Resilience().init_app(Flask("invalid_env"))


def test_cluster_nodes_accept_a_list_or_a_comma_string() -> None:
    expected = (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert validators.cluster_nodes(["10.0.0.1:7000", "10.0.0.2:7001"]) == expected
    assert validators.cluster_nodes("10.0.0.1:7000,10.0.0.2:7001") == expected
    assert validators.cluster_nodes("true") is True


def test_principal_loader_import_string_resolves() -> None:
    assert validators.optional_callable("os.path:basename") is __import__("os").path.basename
