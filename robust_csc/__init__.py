"""robust-csc: convolutional sparse coding networks and their robustness."""

from robust_csc.errors import RobustCSCError

__version__ = "0.2.0"

__all__ = ["RobustCSCError", "__version__"]
