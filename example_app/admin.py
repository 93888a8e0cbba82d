"""``/api/admin/...``: operator endpoints, every request audited with its body and query."""

from __future__ import annotations

import requests
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from flask_resilience import Problem, audit_blueprint
from flask_resilience.audit.cli import verify_app_log
from flask_resilience.audit.service import AppAudit
from flask_resilience.health.auth import check_admin

from .flights import provider_client
from .payments import charge_count
from .provider import MODES
from .validation import json_body

admin_blueprint = Blueprint("admin", __name__, url_prefix="/api/admin")
# Every request to these views is audited (event ADMIN) with its body and query string.
audit_blueprint(admin_blueprint, include_body=True, include_query=True)


@admin_blueprint.before_request
def only_admins() -> None:
    check_admin()  # an admin user's login token, or RESILIENCE_ADMIN_TOKEN


@admin_blueprint.get("/provider")
def provider_mode() -> ResponseReturnValue:
    client = provider_client()
    return jsonify(requests.get(f"{client.url}/mode", timeout=2).json())


@admin_blueprint.post("/provider")
def set_provider_mode() -> ResponseReturnValue:
    """``{"mode": "ok"|"slow"|"fail"}``: how the flights provider answers from now on."""
    mode = json_body().get("mode")
    if mode not in MODES:
        raise Problem(
            400, "invalid-body", "Invalid request body", f"'mode' must be one of {', '.join(MODES)}."
        )
    client = provider_client()
    # Straight to the provider, around the breaker: an operator switch is not traffic.
    answer = requests.post(f"{client.url}/mode", json={"mode": mode}, timeout=2)
    answer.raise_for_status()
    return jsonify(answer.json())


@admin_blueprint.get("/charges")
def charges() -> ResponseReturnValue:
    return jsonify(charges=charge_count())


@admin_blueprint.get("/audit/verify")
def verify_audit_log() -> ResponseReturnValue:
    """What ``flask resilience audit verify`` checks, as JSON."""
    reports, _ = verify_app_log(AppAudit.of().engine())
    chains = [
        {"chain_id": report.chain_id, "rows": report.rows, "ok": report.ok, "report": report.lines()}
        for report in reports
    ]
    return jsonify(intact=all(report.ok for report in reports), chains=chains)
