"""Screenshot of an HTML report as headless Chromium renders it (the README's picture of the group report).

Playwright drives Debian's chromium (`apt-get install chromium`; Playwright's own browser download is not used).

    python Scripts/render_report_screenshot.py audit/report.html Resources/Screenshots/group_report.png [--height 1500]
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500, help="the top of the page to keep (CSS pixels)")
    args = parser.parse_args()
    browser_path = shutil.which("chromium")
    if browser_path is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.report.resolve().as_uri())
        page.screenshot(path=str(args.png), full_page=False)
        browser.close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
