"""Scenario 5: each payment runs exactly once, whichever worker gets each of
four concurrent copies, and a view that fails after charging is not retried."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.system.harness import Answer, OwnPostgres, Stack, app_stack, call, report, rows, scalar

pytestmark = pytest.mark.system

KEYS, CRASHING_KEYS, SENDS = 50, 10, 4
BATCH = 5  # keys sent at once: BATCH * SENDS threads released by one barrier


def _pay(stack: Stack, token: str, key: str, order: dict[str, object], barrier: threading.Barrier) -> Answer:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    with requests.Session() as session:
        barrier.wait(10)
        return call(session, "POST", f"{stack.url}/api/payments", tag=key, json=order, headers=headers)


def send_concurrently(stack: Stack, token: str, orders: dict[str, dict[str, object]]) -> list[Answer]:
    """Every order SENDS times at once (BATCH keys together), as clients retrying in parallel."""
    answers: list[Answer] = []
    lock = threading.Lock()
    keys = list(orders)
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        barrier = threading.Barrier(len(batch) * SENDS)

        def send(key: str, barrier: threading.Barrier = barrier) -> None:
            answer = _pay(stack, token, key, orders[key], barrier)
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=send, args=(key,)) for key in batch for _ in range(SENDS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    return answers


def check_exactly_once(stack: Stack, scenario: str) -> None:
    token = stack.login("alice")
    auth = {"Authorization": f"Bearer {token}"}
    booked = requests.post(
        f"{stack.url}/api/bookings", json={"flight": "LH401", "passenger": "P"}, headers=auth, timeout=10
    )
    assert booked.status_code == 201, booked.text
    run = uuid.uuid4().hex[:8]
    card = "4111111111111111"
    orders: dict[str, dict[str, object]] = {
        f"pay-{run}-{number}": {
            "booking_id": booked.json()["id"],
            "amount_cents": 100 + number,
            "card_number": card,
        }
        for number in range(KEYS)
    }
    crashing = {
        f"crash-{run}-{number}": {
            "booking_id": booked.json()["id"],
            "amount_cents": 7,
            "card_number": card,
            "simulate": "crash-after-charge",
        }
        for number in range(CRASHING_KEYS)
    }
    answers = send_concurrently(stack, token, {**orders, **crashing})
    assert len(answers) == (KEYS + CRASHING_KEYS) * SENDS

    kinds: Counter[str] = Counter()
    originals: dict[str, Answer] = {}  # the run of each key (a 500 from the app's handler if it raised)
    stored: dict[str, Answer] = {}  # the first replay of each key: what the key keeps
    for answer in answers:
        replayed = answer.headers.get("X-Idempotency-Replayed") == "true"
        if answer.status == 409:
            kinds["409-in-flight"] += 1
        elif replayed:
            reference = stored.setdefault(answer.tag, answer)
            assert (answer.status, answer.body) == (reference.status, reference.body), answer.tag
            kinds["replayed"] += 1
        else:
            assert answer.tag not in originals, f"{answer.tag} ran twice"
            originals[answer.tag] = answer
    assert set(originals) == set(orders) | set(crashing)
    for key, original in originals.items():
        if key in orders:
            assert original.status == 201, original.body
            assert key not in stored or stored[key].body == original.body, key
            stored[key] = original
        else:
            assert original.status == 500, original.body
            assert key not in stored or stored[key].status == 500, key

    # A later retry of every key, one at a time: always the stored answer, byte for byte.
    retried = Counter[int]()
    with requests.Session() as session:
        for key, order in {**orders, **crashing}.items():
            again = call(
                session,
                "POST",
                f"{stack.url}/api/payments",
                json=order,
                headers={**auth, "Idempotency-Key": key},
            )
            reference = stored.setdefault(key, again)
            assert (again.status, again.body) == (reference.status, reference.body), key
            assert again.headers.get("X-Idempotency-Replayed") == "true"
            retried[again.status] += 1

    charges = scalar(stack.database_url, "SELECT count(*) FROM example_charges")
    per_amount = rows(stack.database_url, "SELECT amount_cents, count(*) FROM example_charges GROUP BY 1")
    report(
        scenario,
        requests=len(answers),
        charges=charges,
        **dict(sorted(kinds.items())),
        retries_replayed_201=retried[201],
        retries_replayed_500=retried[500],
    )
    assert charges == KEYS + CRASHING_KEYS
    assert all(count == (CRASHING_KEYS if amount == 7 else 1) for amount, count in per_amount)


def test_each_payment_is_charged_once_across_workers(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    with app_stack(own_postgres, tmp_path) as stack:
        check_exactly_once(stack, "5 exactly once (4 workers, own Redis)")
