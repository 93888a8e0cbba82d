"""Health, dashboard and admin endpoints, one module per feature."""

from . import breakers as _breakers  # noqa: F401  (registers its routes)
from .blueprint import health_blueprint

__all__ = ["health_blueprint"]
