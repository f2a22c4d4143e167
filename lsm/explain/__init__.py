"""SHAP explanations of the model families (:mod:`lsm.explain.shap_values`, plots).

``lsm.explain`` is also the API function :func:`lsm.api.explain`: this package's
name is the same, so the package is callable and ``lsm.explain(run)`` forwards to it.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from lsm.api import explain

        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
