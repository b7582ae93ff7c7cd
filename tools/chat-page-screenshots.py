"""Screenshots of the chat page against a running stack, for the README and docs.

    .venv/bin/flywheel up                          # or a copy of a demo's stack, to show runs
    .venv/bin/python tools/chat-page-screenshots.py [--url http://127.0.0.1:8000]
        [--key-file data/dev-api-key] [--out docs]

Drives Debian's Chromium with Playwright through one chat with a thumb, one comparison of two
answers and the status view, and saves chat-page.png, chat-page-compare.png and
chat-page-status.png. The answers are whatever the served model writes (the browser tests
check behaviour; this only takes pictures).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ANSWER_TIMEOUT_MS = 180_000  # the real model on two CPU cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key-file", type=Path, default=Path("data/dev-api-key"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    key = args.key_file.read_text().strip()
    args.out.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(args.url + "/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Use key").click()

        page.get_by_label("Message").fill("Give me three short tips for sleeping better.")
        page.get_by_label("Message").press("Enter")
        answer = page.locator(".turn.assistant").last
        expect(answer.locator(".thumb.up")).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
        answer.get_by_role("button", name="Thumbs up").click()
        answer.get_by_role("button", name="Helpful").click()
        page.screenshot(path=args.out / "chat-page.png")
        answer.get_by_role("button", name="Send feedback").click()
        expect(answer.locator(".feedback-state")).to_have_text("Recorded. Thank you!")

        page.get_by_role("button", name="New chat").click()
        page.get_by_label("Compare answers").check()
        page.get_by_label("Answers to compare").select_option("2")
        page.get_by_label("Message").fill("Write a two-line poem about the sea.")
        page.get_by_label("Message").press("Enter")
        expect(page.get_by_role("button", name="A is better")).to_be_visible(
            timeout=ANSWER_TIMEOUT_MS
        )
        page.screenshot(path=args.out / "chat-page-compare.png", full_page=True)

        page.get_by_role("button", name="Status").click()
        expect(page.locator("#serving")).to_contain_text("Model")
        page.wait_for_timeout(2000)  # the trainer's part answers within the status timeout
        page.screenshot(path=args.out / "chat-page-status.png")
        browser.close()
    print(f"wrote chat-page.png, chat-page-compare.png, chat-page-status.png to {args.out}")


if __name__ == "__main__":
    main()
