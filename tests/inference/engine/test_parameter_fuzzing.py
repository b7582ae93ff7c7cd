"""Property-based: random and boundary parameter values fired at the engine while other
requests run. Whatever a request carries, it gets a 2xx or a 4xx in TGI's shape, the greedy
answers running beside it do not change, no slot leaks, and the engine stays ready.

Bounded: a fixed number of examples per route, no shrinking deadline (the suite's budget).
"""

from __future__ import annotations

import json
import math
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inference.engine.test_isolation import assert_no_slot_leaks
from tests.schema_fuzzing import fuzz_api

BOUNDARY_INTS = [-1, 0, 1, 2, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
BOUNDARY_FLOATS = [
    -1.0,
    0.0,
    5e-324,
    1e-300,
    1e-45,
    1e-6,
    0.5,
    0.999999,
    1.0,
    1.000001,
    2.0,
    1e6,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]


def numbers(ints=BOUNDARY_INTS, floats=BOUNDARY_FLOATS):
    return st.one_of(
        st.sampled_from(ints),
        st.sampled_from(floats),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.none(),
        st.booleans(),
        st.text(max_size=3),
    )


def maybe(value_strategy):
    """Leave the field out, or give it a value."""
    return st.one_of(st.just(None), value_strategy.map(lambda v: ("set", v)))


def body_from(fields: dict) -> dict:
    return {name: value[1] for name, value in fields.items() if value is not None}


# Values each field accepts: half of the examples draw only these, so that the property also
# covers requests that generate (with extreme but legal values), not only refusals.
VALID_TGI = {
    "temperature": st.one_of(st.floats(1e-300, 1e6), st.sampled_from([1e-300, 1e-45, 1e6])),
    "top_k": st.integers(1, 2**63),
    "top_p": st.floats(1e-9, 1.0, exclude_max=True, exclude_min=True),
    "repetition_penalty": st.floats(1e-300, 1e300),
    "seed": st.integers(0, 2**64 - 1),
    "truncate": st.integers(1, 10**9),
    "max_new_tokens": st.integers(1, 6),
    "do_sample": st.booleans(),
    "details": st.booleans(),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=4),
}
CHAOS_ONLY_TGI = ("best_of", "typical_p", "top_n_tokens", "frequency_penalty", "watermark")

VALID_CHAT = {
    "temperature": st.floats(0.0, 2.0),
    "top_p": st.floats(1e-9, 1.0, exclude_min=True),
    "seed": st.integers(0, 2**64 - 4),
    "n": st.integers(1, 3),
    "max_tokens": st.integers(1, 6),
    "stream": st.booleans(),
    "stop": st.one_of(st.text(min_size=1, max_size=4), st.lists(st.text(max_size=4), max_size=4)),
}
CHAOS_ONLY_CHAT = ("presence_penalty", "frequency_penalty", "messages")


def parameters(valid: dict, chaos_only: tuple) -> st.SearchStrategy[dict]:
    legal = st.fixed_dictionaries({name: maybe(values) for name, values in valid.items()})
    chaotic = st.fixed_dictionaries(
        {name: maybe(st.one_of(values, numbers())) for name, values in valid.items()}
        | {name: maybe(numbers()) for name in chaos_only}
    )
    return st.one_of(legal, chaotic)


TGI_PARAMETERS = parameters(VALID_TGI, CHAOS_ONLY_TGI)
CHAT_FIELDS = parameters(VALID_CHAT, CHAOS_ONLY_CHAT)


@pytest.fixture
def engine_overrides():
    return {"max_total_tokens": 256, "max_input_tokens": 128, "max_batch_size": 8}


class Bystander:
    """Greedy requests running the whole time; every answer must equal the reference."""

    PROMPT = "The weather today"

    def __init__(self, engine) -> None:
        self.client = httpx.Client(base_url=engine.url, timeout=60)
        self.expected = self._generate()
        self.answers = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _generate(self) -> str:
        body = {"inputs": self.PROMPT, "parameters": {"max_new_tokens": 12}}
        response = self.client.post("/generate", json=body)
        assert response.status_code == 200, response.text
        return response.json()["generated_text"]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = self._generate()
            except AssertionError as error:
                self.wrong.append(str(error))
                continue
            self.answers += 1
            if text != self.expected:
                self.wrong.append(text)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()


def post_raw(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    # allow_nan: NaN and infinities go out as JSON's non-standard tokens, as a client may send.
    content = json.dumps(body, allow_nan=True)
    return client.post(path, content=content, headers={"content-type": "application/json"})


def check_answer(response: httpx.Response, statuses: list[int]) -> None:
    statuses.append(response.status_code)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "error_type"} and body["error"], body
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert '"error"' not in response.text, response.text


FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_random_parameters_never_hurt_the_engine_or_its_other_requests(engine):
    client = httpx.Client(base_url=engine.url, timeout=60)
    statuses: list[int] = []
    with Bystander(engine) as bystander:

        @FUZZ
        @given(parameters=TGI_PARAMETERS, route=st.sampled_from(["/generate", "/generate_stream"]))
        def tgi(parameters, route):
            body = {"inputs": "Hello", "parameters": body_from(parameters)}
            check_answer(post_raw(client, route, body), statuses)

        @FUZZ
        @given(fields=CHAT_FIELDS)
        def chat(fields):
            body = {"messages": [{"role": "user", "content": "Hi"}], **body_from(fields)}
            check_answer(post_raw(client, "/v1/chat/completions", body), statuses)

        tgi()
        chat()
    client.close()
    # Both sides were exercised: requests that generated and requests that were refused.
    assert statuses.count(200) >= 10 and sum(400 <= s < 500 for s in statuses) >= 10, statuses
    assert bystander.answers > 0 and bystander.wrong == []
    assert_no_slot_leaks(engine)
    assert engine.http.get("/health").status_code == 200
    assert engine.http.get("/livez").status_code == 200
    # Every request counted on arrival: outcomes never outnumber requests.
    counts = metric_values(engine.http.get("/metrics").text)
    finished = counts["tgi_request_success"] + counts["tgi_request_failure"]
    assert counts["tgi_request_count"] >= finished >= len(statuses)


def metric_values(text: str) -> dict[str, float]:
    """Sum of each sample's values by metric name (labels summed over)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name = name.split("{")[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_schema_fuzzing_of_the_engine_api(engine):
    calls = fuzz_api(engine.url, max_examples=15)
    assert {label.split(" [")[0] for label in calls} >= {
        "POST /generate",
        "POST /generate_stream",
        "POST /",
        "POST /v1/chat/completions",
        "GET /info",
    }
    assert_no_slot_leaks(engine)
    assert engine.http.get("/health").status_code == 200
