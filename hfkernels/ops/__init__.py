"""Op implementations; importing this package registers every backend's ops.

One module per op and backend family. Modules whose dependencies are missing (no triton, no
compiled extension) register nothing; the backend registry then reports why.
"""
from . import fuse_torch  # noqa: F401

try:
    from . import fuse_triton  # noqa: F401
except ImportError:
    pass
try:
    from . import fuse_ext  # noqa: F401
except ImportError:
    pass
