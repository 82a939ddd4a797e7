"""Few-shot methods: one module per method, all registered by name with one forward contract.

``build_method(name, feature_dim=..., **knobs)`` builds one; ``list_methods()`` and ``method_info(name)``
say what exists and what each consumes. Importing this package registers the built-in methods.
"""

# Imported for their registration side effect.
from fsar.methods import a2m2, bimhm, clip_fsar, dmgal, i2st, otam, protonet, trx  # noqa: F401
from fsar.methods.base import FewShotMethod
from fsar.methods.registry import (
    Configuration,
    MethodInfo,
    UnknownMethodError,
    build_method,
    list_methods,
    method_info,
    register_method,
)

__all__ = [
    "Configuration",
    "FewShotMethod",
    "MethodInfo",
    "UnknownMethodError",
    "build_method",
    "list_methods",
    "method_info",
    "register_method",
]
