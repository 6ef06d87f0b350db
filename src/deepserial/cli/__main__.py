"""``python -m deepserial.cli``: the same command as ``deepserial`` and ``python -m deepserial``."""

import sys

from deepserial.cli import main

sys.exit(main())
