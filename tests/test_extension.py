"""The extension object: registration, per-app state, shutdown."""

from __future__ import annotations

import logging
import multiprocessing

import pytest
from flask import Flask

from flask_resilience import Resilience, current_request_id
from flask_resilience.state import get_state
from tests.conftest import MakeApp


def test_second_init_app_on_same_app_raises(make_app: MakeApp) -> None:
    app, extension = make_app()
    with pytest.raises(RuntimeError, match="already registered"):
        extension.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        Resilience().init_app(app)


def test_module_function_without_init_app_says_to_call_it() -> None:
    app = Flask("bare")
    with app.test_request_context("/"), pytest.raises(RuntimeError, match=r"init_app\(app\)"):
        current_request_id()


def test_module_function_outside_app_context_says_so() -> None:
    with pytest.raises(RuntimeError, match="application context"):
        get_state()


def test_one_extension_serves_several_apps_without_storing_them(make_app: MakeApp) -> None:
    extension = Resilience()
    first, _ = make_app(extension, RESILIENCE_HEALTH_PREFIX="/first")
    second, _ = make_app(extension, RESILIENCE_HEALTH_PREFIX="/second")
    assert first.test_client().get("/first").status_code == 200
    assert second.test_client().get("/second").status_code == 200
    assert first.test_client().get("/second").status_code == 404
    assert get_state(first) is not get_state(second)
    assert not any(isinstance(value, Flask) for value in vars(extension).values())


def test_constructor_app_argument_registers(tmp_path: object) -> None:
    app = Flask("direct")
    extension = Resilience(app)
    try:
        assert get_state(app).hooks is extension.hooks
    finally:
        extension.shutdown()


def test_unknown_constructor_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="redis_ulr"):
        Resilience(redis_ulr="redis://localhost")


def _missing_redis_warnings_for_three_apps() -> int:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger("flask_resilience").addHandler(Keep())
    for number in range(3):
        Resilience(Flask(f"app{number}")).shutdown()
    return sum("RESILIENCE_REDIS_URL is not set" in record.getMessage() for record in records)


def test_memory_mode_warns_once_per_process_that_state_is_per_process() -> None:
    # A fresh process: the warning is once per process, and this one may have had it.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_missing_redis_warnings_for_three_apps) == 1


def test_no_warning_with_redis(make_app: MakeApp, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        make_app(RESILIENCE_REDIS_URL=redis_url)
    assert not [r for r in caplog.records if "RESILIENCE_REDIS_URL" in r.getMessage()]


def test_shutdown_stops_background_threads_and_is_repeatable(make_app: MakeApp, redis_url: str) -> None:
    app, extension = make_app(RESILIENCE_REDIS_URL=redis_url)
    store = get_state(app).redis
    assert store is not None
    store.subscribe(store.channel("test"), lambda _message: None)
    subscriber = store.subscriber
    assert subscriber.wait_until_listening()
    thread = subscriber._thread
    assert thread is not None and thread.is_alive()

    stopped: list[str] = []

    class Flusher:
        def stop(self) -> None:
            stopped.append("flushed")

    get_state(app).add_background(Flusher())
    extension.shutdown()
    assert not thread.is_alive()
    assert stopped == ["flushed"]
    extension.shutdown()  # services stay registered: a second stop must be harmless
    assert stopped == ["flushed", "flushed"]


def test_health_blueprint_can_be_switched_off(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_HEALTH_ENABLED=False)
    assert app.test_client().get("/api/health").status_code == 404


def test_init_app_starts_no_thread_the_first_request_does(make_app: MakeApp, redis_url: str) -> None:
    # A thread running in a pre-fork master (gunicorn --preload) can hold the
    # import lock at fork time and deadlock the workers: none may start there.
    import threading

    def ours() -> set[str]:
        return {thread.name for thread in threading.enumerate() if thread.name.startswith("flask-resilience")}

    before = ours()
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_BREAKER_STORAGE="redis")
    assert ours() == before
    app.test_client().get("/api/health")
    assert "flask-resilience-pubsub" in ours()
