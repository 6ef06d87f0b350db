"""README's generated result tables match the committed reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_watermark_tables_match_reports() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, "README's watermark tables differ from reports/: run python scripts/update_readme.py"
