"""Regenerate the screenshots of docs/webui.md: run the browser tests (a fine-tune, a chat, an evaluation
in the real page) and photograph every tab afterwards, so the pictures show a page that did real work.

    python plugins/factory-plugin-webui/scripts/screenshots.py [OUTPUT_FOLDER]   # default docs/images/webui
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1]
ROOT = PLUGIN.parents[1]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "images" / "webui").resolve()
    env = {**os.environ, "FACTORY_WEBUI_SCREENSHOTS": str(out)}
    tests = PLUGIN / "tests" / "test_webui_browser.py"
    code = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], env=env
    ).returncode
    for path in sorted(out.glob("*.png")):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return code


if __name__ == "__main__":
    sys.exit(main())
