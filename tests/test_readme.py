"""README's generated result tables match the committed reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_watermark_tables_match_reports() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], cwd=ROOT)
    assert r.returncode == 0, "README's watermark tables differ from reports/: run python scripts/update_readme.py"


def test_dsn_attack_section_comes_from_the_report(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.dsn_attack_table(ROOT / "reports", "mnist5k")
    assert "| from scratch on the same data (the * row) | 80.5 / 88.7 / 92.9 / 94.5 |" in text
    assert "**0 unlocks in 100,000 tries**" in text
    assert mod.dsn_attack_table(tmp_path, "fashion-mnist").startswith("No report yet")
