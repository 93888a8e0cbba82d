"""The test fixtures find real services or start throwaway ones, never skip."""

from __future__ import annotations

import pytest

from tests.services import (
    ServiceUnavailable,
    find_mysql,
    find_or_start_postgres,
    find_or_start_redis,
    free_port,
    redis_answers,
    sql_answers,
    wait_for,
)


def test_starts_a_throwaway_redis_when_pointed_at_nothing() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    service = find_or_start_redis(None, default_url=dead)
    try:
        assert service.throwaway
        assert service.url != dead
        assert redis_answers(service.url)
    finally:
        service.stop()
    wait_for(lambda: not redis_answers(service.url), "the throwaway Redis to stop")


def test_starts_a_throwaway_postgres_when_pointed_at_nothing() -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    service = find_or_start_postgres(None, default_url=dead)
    try:
        assert service.throwaway
        assert sql_answers(service.url)
    finally:
        service.stop()
    assert not sql_answers(service.url)


def test_explicit_urls_that_do_not_answer_are_errors() -> None:
    with pytest.raises(ServiceUnavailable, match="RESILIENCE_TEST_REDIS_URL"):
        find_or_start_redis(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ServiceUnavailable, match="RESILIENCE_TEST_DATABASE_URL"):
        find_or_start_postgres(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(ServiceUnavailable, match="apt-get install mariadb-server"):
        find_mysql(f"mysql+pymysql://root@127.0.0.1:{free_port()}/test")
