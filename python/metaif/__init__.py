"""metaif: data influence in meta-learning.

Importing the package loads the compiled kernels (``metaif._C``), which register every op under
``torch.ops.metaif``; :mod:`metaif.ops` holds their typed Python wrappers.
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import (
    _C,  # noqa: F401  (registers torch.ops.metaif.*)
    ops,
)

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
