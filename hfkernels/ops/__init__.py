"""Op implementations; importing this package registers every backend's ops.

One module per op family and backend (Liger-Kernel style), named ``<family>_<backend>.py``;
every module here whose name does not start with ``_`` is imported (``_*`` modules are shared
helpers), so a new op module needs no list to be edited. A module whose optional dependency is
missing (no triton, no compiled extension) must import cleanly and register nothing; the
backend registry then reports why that backend is unavailable.
"""
import importlib
import pkgutil

#: the op modules found here, in import order
MODULES = tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

for _m in MODULES:
    importlib.import_module(f"{__name__}.{_m}")
