"""The one table of settings (``SETTINGS``) and how an app's values are
resolved from it; the package's docstring gives the precedence."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

from ..validators import Invalid
from .audit import (
    AUDIT_BUFFER_SIZE,
    AUDIT_CHECKPOINT_DATABASE_URI,
    AUDIT_CHECKPOINT_INTERVAL,
    AUDIT_CHECKPOINT_SECONDS,
    AUDIT_CHECKPOINT_SINK,
    AUDIT_ENABLED,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_HMAC_KEY,
    AUDIT_JOURNAL_FSYNC,
    AUDIT_MAX_BODY_BYTES,
    AUDIT_MAX_QUEUE,
    AUDIT_PARTITION,
    AUDIT_PREVIOUS_HMAC_KEYS,
    AUDIT_REDACT_KEYS,
    AUDIT_REDACTOR,
    AUDIT_SPILL_MAX_BYTES,
    AUDIT_SPILL_PATH,
)
from .breaker import BREAKER_DEFAULTS, BREAKER_ENABLED, BREAKER_STORAGE
from .cache import (
    CACHE_BACKEND,
    CACHE_DEFAULT_TTL,
    CACHE_DENIED_HEADERS,
    CACHE_ENABLED,
    CACHE_HONOR_NO_CACHE,
    CACHE_L1_MAX_BYTES,
    CACHE_L1_MAX_ENTRIES,
    CACHE_L1_MAX_TTL,
    CACHE_LOCK_TIMEOUT,
    CACHE_MAX_BODY_BYTES,
    CACHE_PRIVATE_COOKIES,
    CACHE_PRIVATE_HEADERS,
    CACHE_SERIALIZER,
    CACHE_STORED_HEADERS,
    CACHE_WRITE_BEHIND_QUEUE,
)
from .general import (
    ADMIN_TOKEN,
    DATABASE_URI,
    KEY_PREFIX,
    PRINCIPAL_LOADER,
    READ_SEED_ENV,
    REDIS_CLUSTER,
    REDIS_CONNECT_TIMEOUT,
    REDIS_SOCKET_TIMEOUT,
    REDIS_URL,
    REQUEST_ID_HEADER,
)
from .health import (
    HEALTH_CHECK_TIMEOUT,
    HEALTH_CRITICAL,
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    HEALTH_SHOW_VERSION,
)
from .idempotency import (
    IDEMPOTENCY_AUTO_GENERATE,
    IDEMPOTENCY_ENABLED,
    IDEMPOTENCY_LEASE,
    IDEMPOTENCY_MAX_BODY_BYTES,
    IDEMPOTENCY_MEMORY_BYTES,
    IDEMPOTENCY_MEMORY_ENTRIES,
    IDEMPOTENCY_ON_ERROR,
    IDEMPOTENCY_STORED_HEADERS,
    IDEMPOTENCY_TTL,
)
from .setting import Config, Setting

T = TypeVar("T")

SETTINGS: tuple[Setting[Any], ...] = (
    READ_SEED_ENV,
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_SOCKET_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    KEY_PREFIX,
    DATABASE_URI,
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    HEALTH_CRITICAL,
    HEALTH_SHOW_VERSION,
    HEALTH_CHECK_TIMEOUT,
    ADMIN_TOKEN,
    REQUEST_ID_HEADER,
    PRINCIPAL_LOADER,
    BREAKER_ENABLED,
    BREAKER_DEFAULTS,
    BREAKER_STORAGE,
    CACHE_ENABLED,
    CACHE_DEFAULT_TTL,
    CACHE_L1_MAX_ENTRIES,
    CACHE_L1_MAX_BYTES,
    CACHE_L1_MAX_TTL,
    CACHE_LOCK_TIMEOUT,
    CACHE_HONOR_NO_CACHE,
    CACHE_MAX_BODY_BYTES,
    CACHE_STORED_HEADERS,
    CACHE_DENIED_HEADERS,
    CACHE_PRIVATE_HEADERS,
    CACHE_PRIVATE_COOKIES,
    CACHE_WRITE_BEHIND_QUEUE,
    CACHE_BACKEND,
    CACHE_SERIALIZER,
    AUDIT_ENABLED,
    AUDIT_BUFFER_SIZE,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_MAX_QUEUE,
    AUDIT_SPILL_PATH,
    AUDIT_SPILL_MAX_BYTES,
    AUDIT_JOURNAL_FSYNC,
    AUDIT_HMAC_KEY,
    AUDIT_PREVIOUS_HMAC_KEYS,
    AUDIT_CHECKPOINT_INTERVAL,
    AUDIT_CHECKPOINT_SECONDS,
    AUDIT_CHECKPOINT_DATABASE_URI,
    AUDIT_CHECKPOINT_SINK,
    AUDIT_PARTITION,
    AUDIT_REDACT_KEYS,
    AUDIT_REDACTOR,
    AUDIT_MAX_BODY_BYTES,
    IDEMPOTENCY_ENABLED,
    IDEMPOTENCY_TTL,
    IDEMPOTENCY_AUTO_GENERATE,
    IDEMPOTENCY_LEASE,
    IDEMPOTENCY_MAX_BODY_BYTES,
    IDEMPOTENCY_STORED_HEADERS,
    IDEMPOTENCY_MEMORY_ENTRIES,
    IDEMPOTENCY_MEMORY_BYTES,
    IDEMPOTENCY_ON_ERROR,
)

OPTIONS: Mapping[str, Setting[Any]] = {setting.option: setting for setting in SETTINGS}

EXAMPLE_ADMIN_TOKENS = frozenset({"change-me-to-a-long-random-token"})
"""Admin tokens that were printed in documentation: ``init_app`` warns about them."""


def check_options(options: Mapping[str, object]) -> None:
    """Reject constructor keywords that name no setting."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"Resilience() got unknown option(s) {', '.join(unknown)}; "
            f"valid options are {', '.join(sorted(OPTIONS))}"
        )


def resolve(
    app_config: MutableMapping[str, Any],
    options: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Fill ``app_config`` with every key, validated and parsed (see the
    module's precedence), and return the typed :class:`Config`.

    Raises :class:`ValueError` naming the key, the offending value and, when
    it came from the environment, the variable.
    """
    environ = os.environ if environ is None else environ
    from_env: dict[str, str] = {}
    values: dict[str, object] = {}
    for setting in SETTINGS:  # READ_SEED_ENV comes first: it decides the others' sources
        read_seed = bool(values.get(READ_SEED_ENV.key, True))
        raw, variable = _raw_value(setting, app_config, options, environ, read_seed=read_seed)
        try:
            values[setting.key] = _parse(setting, raw, environ.get(variable) if variable else None)
        except Invalid as exc:
            source = f" (from environment variable {variable})" if variable else ""
            raise ValueError(f"{setting.key}={raw!r}{source} is invalid: {exc}") from None
        if variable:
            from_env[setting.key] = variable
    app_config.update(values)  # typed: "false" must not stay a truthy string for other readers
    return Config(values)


def _parse(setting: Setting[T], raw: object, text: str | None) -> T:
    """``raw`` parsed; an environment value that read as JSON but does not fit
    (a numeric token for a string key) is tried again as the text it was."""
    try:
        return setting.parse(raw)
    except Invalid:
        if text is None or raw == text:
            raise
        try:
            return setting.parse(text)
        except Invalid:
            pass
        raise


def _raw_value(
    setting: Setting[Any],
    app_config: Mapping[str, Any],
    options: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    read_seed: bool,
) -> tuple[object, str | None]:
    """The unparsed value of ``setting`` and the environment variable it came from, if any."""
    if setting.option in options:
        return options[setting.option], None
    if setting.key in app_config:
        return app_config[setting.key], None
    if setting.key in environ:
        text = environ[setting.key]
        try:
            return json.loads(text), setting.key
        except ValueError:
            return text, setting.key
    if read_seed and setting.env and setting.env in environ:
        return environ[setting.env], setting.env
    return setting.default, None
