"""Screenshot of an evaluation report's HTML page in headless Chromium (a documented check).

Usage: ``python scripts/report_screenshot.py REPORT_DIR [--width 1400]`` writes
``REPORT_DIR/report_screenshot.png``: the whole page, cropped below its last content, in 256
colours. Needs the Debian package ``chromium`` (``apt-get install chromium``); Pillow comes
with matplotlib. Look at the result: it is how the report reads in a browser.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
)


def screenshot(report_dir: Path, width: int = 1400, height: int = 12000) -> Path:
    """Render ``report_dir/report.html`` and save ``report_dir/report_screenshot.png``."""
    page = (report_dir / "report.html").resolve()
    if not page.is_file():
        raise SystemExit(f"{page}: no such file (run 'calogen evaluate' first)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "page.png"
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--window-size={width},{height}",
                f"--screenshot={raw}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
        image = Image.open(raw).convert("RGB")
    grey = np.asarray(image.convert("L"))
    used = np.flatnonzero(grey.min(axis=1) < 250)
    bottom = min(int(used.max()) + 30, image.height) if used.size else image.height
    out = report_dir / "report_screenshot.png"
    image.crop((0, 0, width, bottom)).quantize(colors=256).save(out, optimize=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path, help="folder written by 'calogen evaluate -o'")
    parser.add_argument("--width", type=int, default=1400, help="page width in pixels")
    args = parser.parse_args()
    print(screenshot(args.report_dir, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
