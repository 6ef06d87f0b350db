import sys

from deepserial.cli import main

sys.exit(main())
