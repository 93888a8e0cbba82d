"""The one table of settings (``SETTINGS``) and how an app's values are
resolved from it; the package's docstring gives the precedence."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, TypeVar

from ..validators import Invalid
from . import audit, breaker, cache, context, general, health, idempotency
from .general import READ_SEED_ENV
from .setting import Config, Setting

T = TypeVar("T")

SETTINGS: tuple[Setting[Any], ...] = (
    *general.SECTION,  # READ_SEED_ENV first: it decides where the others are read from
    *health.SECTION,
    *context.SECTION,
    *breaker.SECTION,
    *cache.SECTION,
    *audit.SECTION,
    *idempotency.SECTION,
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
