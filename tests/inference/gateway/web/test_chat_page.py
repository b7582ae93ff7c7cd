"""The chat page in a real browser: headless Chromium (Debian's) driven by Playwright, against
the real gateway, engine (tiny model), reward and feedback services on loopback; for the status
view, the trainer's real control worker, or no trainer at all (the view must say so in words).

Each state the tests reach is saved as a screenshot under ``$FLYWHEEL_TEST_ARTIFACTS`` (default
``test-artifacts/``) / ``chat-page/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.api_keys import ApiKeyStore
from services.common.redis_names import TRAINER_WATCH_REPORT
from services.inference.gateway.server import GatewayServer
from services.inference.gateway.settings import GatewaySettings
from services.inference.gateway.web import add_chat_page
from services.trainer.store.runs import RunStore
from services.trainer.watch import WatchReport
from tests.conftest import REPO
from tests.harness import FeedbackService, free_port, wait_for
from tests.stack_fixtures import gateway_settings
from tests.trainer.trainer_helpers import TrainerProcess, trainer_env

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
    # The version that wrote it, and whether it was cut at max_tokens (the tiny model's
    # random answers usually are).
    playwright_api.expect(answer.locator(".version")).to_have_text(
        re.compile(r"^model v0( · cut at the length limit)?$")
    )
    playwright_api.expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
    screenshot(page, "1-answer")
    assert page.console_errors == []


def test_regenerate_replaces_the_last_answer_with_a_new_one(page, page_stack):
    use_key(page, page_stack.key)
    ask(page, "Name a colour.")
    wait_for_answer(page)

    page.get_by_role("button", name="Regenerate").click()

    wait_for_answer(page)
    # One question, one (new) answer on the page; both answers were served and recorded.
    playwright_api.expect(page.locator(".turn.user")).to_have_count(1)
    playwright_api.expect(page.locator(".turn.assistant")).to_have_count(1)
    wait_for(lambda: page_stack.feedback.interaction_count() == 2, 30, "both answers recorded")


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


def record_runs(store: RunStore) -> None:
    """Two finished runs in the trainer's run store, written as a train worker writes them:
    one rejected at the policy gate, then one promoted."""
    outcomes = [
        ("rejected", "policy_gate: win rate 0.41 < 0.5", 0.71, 0.41, None),
        ("succeeded", "", 0.74, 0.62, "v1"),
    ]
    bounds = {"win_rate_lower_bound": 0.55, "alpha": 0.05, "threshold": 0.5}
    for fence, (status, reason, accuracy, win_rate, version) in enumerate(outcomes, start=1):
        run, _ = store.create_run("120 new pairs")
        store.claim(run.id, fence)
        for name, outputs in (
            (
                "rm_gate",
                {"heldout_accuracy": accuracy, "accuracy_lower_bound": accuracy - 0.08}
                # The newer run records which bound it decided on and its threshold.
                | ({"decided_on": "accuracy_lower_bound", "threshold": 0.55} if version else {}),
            ),
            (
                "policy_gate",
                {"win_rate": win_rate, "win_rate_ci90": [win_rate - 0.1, 0.8]}
                # The newer run records the bound it decided on; the older one the rate only.
                | (bounds if version else {}),
            ),
            ("promote", {"version": version, "canary_share": 0.2}),
        ):
            if name == "promote" and version is None:
                break
            store.start_stage(run.id, fence, name)
            store.finish_stage(run.id, fence, name, "done", outputs)
        store.finish_run(run.id, fence, status, reason)


def test_status_view_shows_the_trainers_runs_and_gate_results(
    page, page_stack, tmp_path, gateway_redis_url, policy_store
):
    # The real trainer control worker (Celery) answers the gateway, reading its run store.
    data_dir = tmp_path / "trainer"
    data_dir.mkdir()
    store = RunStore(f"sqlite:///{data_dir / 'trainer.sqlite3'}")
    record_runs(store)
    store.close()
    # The watch's last look at the canary v1, as the control worker's beat-driven watch
    # publishes it (services/trainer/watch.py).
    look = WatchReport(
        "canary",
        "wait",
        "undecided",
        "2026-12-08T10:00:00+00:00",
        version="v1",
        against="v0",
        share=0.2,
        waited_s=600,
        max_wait_s=86400,
        votes=(12, 50),
        version_interval=(0.3, 0.9),
        against_interval=(0.45, 0.75),
    )
    redis.Redis.from_url(gateway_redis_url).set(TRAINER_WATCH_REPORT, json.dumps(asdict(look)))
    env = trainer_env(data_dir, gateway_redis_url, policy_store.root, page_stack.feedback.target)
    control = TrainerProcess(["worker", "control"], env, tmp_path / "control.log").start()
    try:
        use_key(page, page_stack.key)
        page.get_by_role("button", name="Status").click()
        runs = page.locator("#runs")

        def runs_shown() -> bool:  # the worker takes a few seconds to start answering
            if runs.locator("table").count():
                return True
            page.get_by_role("button", name="Refresh").click()
            page.wait_for_timeout(500)
            return False

        wait_for(runs_shown, 60, f"the runs on the page (worker log: {control.log_path})")
        rows = runs.locator("tr")
        playwright_api.expect(rows).to_have_count(3, timeout=ANSWER_TIMEOUT_MS)
        # Newest first: the promoted run, then the rejected one with its reason.
        playwright_api.expect(rows.nth(1)).to_contain_text("succeeded")
        playwright_api.expect(rows.nth(1)).to_contain_text("0.74 (bound 0.66, must reach 0.55)")
        playwright_api.expect(rows.nth(1)).to_contain_text("62% (95% bound 55%, must be above 50%)")
        playwright_api.expect(rows.nth(1)).to_contain_text("v1")
        playwright_api.expect(rows.nth(2)).to_contain_text("rejected")
        playwright_api.expect(rows.nth(2)).to_contain_text("win rate 0.41 < 0.5")
        playwright_api.expect(rows.nth(2)).to_contain_text("41%")
        playwright_api.expect(rows.nth(2)).to_contain_text("0.71 (bound 0.63)")
        watch = page.locator("#watch")
        playwright_api.expect(watch).to_contain_text("Canary v1 on 20% of the keys for 600 of")
        playwright_api.expect(watch).to_contain_text("[30%, 90%] (12 votes) vs [45%, 75%]")
        playwright_api.expect(watch).to_contain_text("Decision: wait")
        screenshot(page, "8-status-runs")
    finally:
        control.stop()


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


@pytest.mark.parametrize(
    ("feedback_url", "connect"),
    [
        ("", "connect-src 'self';"),
        ("https://fb.example.com/", "connect-src 'self' https://fb.example.com;"),
    ],
    ids=["same-origin", "feedback-elsewhere"],
)
def test_the_page_may_connect_only_to_the_gateway_and_the_feedback_api(feedback_url, connect):
    app = FastAPI()
    add_chat_page(app, GatewaySettings(feedback_public_url=feedback_url))
    with TestClient(app) as client:
        page = client.get("/")
        assert connect in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/chat/config.json").json() == {"feedback_url": feedback_url.rstrip("/")}
