"""deepserial: serial numbers and ownership watermarks for PyTorch models.

See README.md for the command line; the main Python entry points are re-exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"
