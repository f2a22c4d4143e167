"""lsm: landslide susceptibility mapping with cross-region transfer.

Learn where landslide data is rich, use it where it is scarce.
"""

from lsm.errors import LsmError

__version__ = "0.1.0"
__all__ = ["LsmError", "__version__"]
