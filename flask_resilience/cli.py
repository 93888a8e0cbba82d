"""The ``flask resilience`` command group.

It knows no feature: each feature adds its own subgroups to it
(``audit.cli.register``), so the commands live next to what they operate on.
Reachable through the ``flask.commands`` entry point and, once ``init_app``
ran, as part of ``app.cli``.
"""

from __future__ import annotations

from flask.cli import AppGroup

resilience = AppGroup("resilience", help="Flask-Resilience commands.")
