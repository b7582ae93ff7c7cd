"""The chat page in a real browser: headless Chromium (Debian's) driven by Playwright, against
the real gateway, engine (tiny model), reward and feedback services on loopback. The trainer
is not running here: the status view must say so in words.

Each state the tests reach is saved as a screenshot under ``$FLYWHEEL_TEST_ARTIFACTS`` (default
``test-artifacts/``) / ``chat-page/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.common.api_keys import ApiKeyStore
from services.inference.gateway.server import GatewayServer
from tests.conftest import REPO
from tests.harness import FeedbackService, free_port
from tests.stack_fixtures import gateway_settings

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("FLYWHEEL_TEST_ARTIFACTS", REPO / "test-artifacts")) / "chat-page"
ANSWER_TIMEOUT_MS = 60_000  # the tiny model answers in well under a second; CI is slow


@dataclass
class PageStack:
    url: str
    key: str
    limited_key: str  # a key with a burst of one request: its second request gets a 429
    feedback: FeedbackService


@pytest.fixture
def page_stack(tmp_path, gateway_redis_url, engine_server, reward_target) -> Iterator[PageStack]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    # The feedback service admits the page's origin (CORS), as an operator configures it.
    feedback = FeedbackService.on_sqlite(
        tmp_path / "feedback", gateway_redis_url, cors_origins=[origin]
    ).start()
    settings = gateway_settings(
        tmp_path,
        gateway_redis_url,
        engine_server.http.port,
        feedback.target,
        reward_target,
        http_port=port,
        feedback_public_url=feedback.http_url,
        status_timeout_s=1.0,
        status_cache_s=0,
    )
    settings.resolved_api_keys_file.parent.mkdir(parents=True, exist_ok=True)
    keys = ApiKeyStore(settings.resolved_api_keys_file)
    key, _ = keys.create("browser")
    limited, _ = keys.create("limited", rate_limit_requests_per_minute=1, rate_limit_burst=1)
    gateway = GatewayServer(settings)
    gateway.start()
    try:
        yield PageStack(origin, key, limited, feedback)
    finally:
        gateway.stop()
        feedback.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("no Chromium: `make test` installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, page_stack):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.goto(page_stack.url + "/chat")
    page.console_errors = console_errors
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def use_key(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    playwright_api.expect(page.locator("#key-state")).to_have_text("Key set for this tab.")


def ask(page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def wait_for_answer(page):
    """The newest answer, once it is complete (its thumbs are enabled)."""
    answer = page.locator(".turn.assistant").last
    playwright_api.expect(answer.locator(".thumb.up")).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
    return answer


def stored_rows(feedback: FeedbackService, query: str, **params) -> list[tuple]:
    """Rows of the feedback service's own database (its SQLite file)."""
    engine = sa.create_engine(feedback.settings.database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(query), params).all()]
    finally:
        engine.dispose()


def stored_events(feedback: FeedbackService, kind: str) -> list[dict]:
    query = "SELECT payload FROM feedback_events WHERE kind = :kind"
    rows = stored_rows(feedback, query, kind=kind)
    return [json.loads(payload) if isinstance(payload, str) else payload for (payload,) in rows]


def test_a_message_gets_a_streamed_answer_with_its_model_version(page, page_stack):
    use_key(page, page_stack.key)
    # The key lives in this tab's sessionStorage only, never in localStorage or a cookie.
    assert page.evaluate("sessionStorage.getItem('flywheel.apiKey')") == page_stack.key
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []

    ask(page, "Tell me about bicycles.")

    answer = wait_for_answer(page)
    assert answer.locator(".text").inner_text().strip()
    playwright_api.expect(answer.locator(".version")).to_have_text("model v0")
    playwright_api.expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
    screenshot(page, "1-answer")
    assert page.console_errors == []


def test_a_thumb_with_a_reason_and_comment_reaches_the_feedback_store(page, page_stack):
    use_key(page, page_stack.key)
    ask(page, "What is the capital of France?")
    answer = wait_for_answer(page)

    answer.get_by_role("button", name="Thumbs down").click()
    answer.get_by_role("button", name="Not factually correct").click()
    answer.get_by_label("Comment").fill("Paris, not this.")
    answer.get_by_role("button", name="Send feedback").click()

    playwright_api.expect(answer.locator(".feedback-state")).to_have_text("Recorded. Thank you!")
    screenshot(page, "2-thumb")
    [thumb] = stored_events(page_stack.feedback, "thumb")
    assert thumb["value"] == -1
    assert thumb["reasons"] == ["not_factual"]
    assert thumb["comment"] == "Paris, not this."
    assert page.console_errors == []


def test_four_candidates_ranked_with_the_keyboard_become_one_ranking(page, page_stack):
    use_key(page, page_stack.key)
    page.get_by_label("Compare answers").check()
    page.get_by_label("Answers to compare").select_option("4")
    ask(page, "Write a haiku about rain.")

    ranking = page.get_by_role("list", name="Your ranking, best first")
    playwright_api.expect(ranking.locator("li")).to_have_count(4, timeout=ANSWER_TIMEOUT_MS)
    for card in page.locator(".candidate").all():
        assert card.locator(".text").inner_text().strip()
    ids = [item.get_attribute("data-response-id") for item in ranking.locator("li").all()]
    # D to the top with the keyboard (three ArrowUps), then B above A with its button.
    ranking.locator("li").nth(3).focus()
    for _ in range(3):
        page.keyboard.press("ArrowUp")
    page.get_by_role("button", name="Move answer B up").click()
    order = [item.get_attribute("data-response-id") for item in ranking.locator("li").all()]
    assert order == [ids[3], ids[1], ids[0], ids[2]]
    page.get_by_role("button", name="Submit ranking").click()

    playwright_api.expect(page.locator(".turn.compare .feedback-state")).to_have_text(
        "Recorded. Thank you!"
    )
    screenshot(page, "3-ranking")
    [ranking_event] = stored_events(page_stack.feedback, "ranking")
    assert ranking_event["ranking"] == [[i] for i in order]
    [comparison] = stored_rows(page_stack.feedback, "SELECT candidates, pairs FROM comparisons")
    candidates, pairs = (json.loads(v) if isinstance(v, str) else v for v in comparison)
    # Four answers in a strict order: every one of the 6 pairs, best first.
    better_worse = {(candidates[b], candidates[w]) for b, w in pairs}
    assert better_worse == {(order[i], order[j]) for i in range(4) for j in range(i + 1, 4)}
    assert page.console_errors == []


def test_two_candidates_get_an_arena_vote(page, page_stack):
    use_key(page, page_stack.key)
    page.get_by_label("Compare answers").check()
    page.get_by_label("Answers to compare").select_option("2")
    ask(page, "Say hello.")

    page.get_by_role("button", name="B is better").click(timeout=ANSWER_TIMEOUT_MS)

    playwright_api.expect(page.locator(".turn.compare .feedback-state")).to_have_text(
        "Recorded. Thank you!"
    )
    [vote] = stored_events(page_stack.feedback, "pairwise")
    assert vote["outcome"] == "b"


def test_api_errors_are_shown_in_words(page, page_stack):
    use_key(page, "fw-not-a-real-key")
    ask(page, "Hello?")
    notice = page.get_by_role("alert")
    playwright_api.expect(notice).to_contain_text("answered 401", timeout=ANSWER_TIMEOUT_MS)
    playwright_api.expect(notice).to_contain_text("Check the API key")
    playwright_api.expect(page.locator(".turn.assistant .feedback-state")).to_contain_text(
        "No answer"
    )
    screenshot(page, "4-bad-key")

    use_key(page, page_stack.limited_key)
    ask(page, "First question.")
    wait_for_answer(page)
    ask(page, "Second question, too soon.")
    playwright_api.expect(notice).to_contain_text("rate limited", timeout=ANSWER_TIMEOUT_MS)
    playwright_api.expect(notice).to_contain_text("Try again in")
    screenshot(page, "5-rate-limited")


def test_status_view_shows_the_version_thumbs_and_an_absent_trainer(page, page_stack):
    use_key(page, page_stack.key)
    ask(page, "Hi!")
    wait_for_answer(page).get_by_role("button", name="Thumbs up").click()
    page.get_by_role("button", name="Send feedback").click()
    playwright_api.expect(page.locator(".feedback-state").last).to_have_text("Recorded. Thank you!")

    page.get_by_role("button", name="Status").click()

    playwright_api.expect(page.locator("#serving")).to_contain_text("Model v0 on cpu")
    thumbs = page.locator("#thumbs table")
    playwright_api.expect(thumbs).to_contain_text("v0")
    playwright_api.expect(thumbs).to_contain_text("100%")
    playwright_api.expect(page.locator("#runs")).to_contain_text(
        "Unavailable: the trainer did not answer within 1 s"
    )
    screenshot(page, "6-status")


def test_the_page_fits_a_phone_screen(browser, page_stack):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(page_stack.url + "/")
        use_key(page, page_stack.key)
        ask(page, "Short answer please.")
        wait_for_answer(page)
        # Nothing wider than the screen: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        screenshot(page, "7-phone")
    finally:
        context.close()
