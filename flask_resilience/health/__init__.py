"""Health, dashboard and admin endpoints, one module per feature."""

from . import audit as _audit  # noqa: F401  (registers its routes)
from . import breakers as _breakers  # noqa: F401
from . import cache as _cache  # noqa: F401
from . import dashboard_page as _dashboard_page  # noqa: F401
from . import metrics as _metrics  # noqa: F401
from . import replay as _replay  # noqa: F401
from .blueprint import health_blueprint

__all__ = ["health_blueprint"]
