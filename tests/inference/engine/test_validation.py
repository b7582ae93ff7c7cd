"""Each of TGI's validation rules refuses with 422, error_type validation and TGI's words."""

from __future__ import annotations

import pytest


@pytest.fixture
def engine_overrides():
    return {"max_input_tokens": 16, "max_total_tokens": 24, "max_best_of": 2}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"typical_p": 0.5}, "`typical_p` is not supported by this engine"),
        ({"seed": 2**64}, "`seed` must be >= 0 and <= 18446744073709551615"),
        ({"seed": -1}, "`seed` must be >= 0"),
        ({"watermark": True}, "`watermark` is not supported by this engine"),
        ({"details": 1}, "details: Input should be a valid boolean"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"max_new_tokens": 23}, "`inputs` tokens + `max_new_tokens` must be <= 24"),
        ({"max_new_tokens": "many"}, "max_new_tokens"),
    ],
)
def test_bad_parameters_are_refused_as_tgi_does(engine, parameters, message):
    response = engine.http.post(
        "/generate", json={"inputs": "Hello there", "parameters": parameters}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "validation"
    assert message in body["error"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_are_refused(engine, value):
    # Python's JSON parser reads all four; a sampler fed them used to poison the batch.
    for parameter in ("temperature", "top_p", "repetition_penalty"):
        body = f'{{"inputs": "Hi", "parameters": {{"{parameter}": {value}}}}}'
        response = engine.http.post(
            "/generate", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (parameter, value, response.text)
        assert response.json()["error_type"] == "validation"


def test_inputs_too_long_or_empty(engine):
    long = engine.http.post("/generate", json={"inputs": "word " * 40, "parameters": {}})
    assert long.status_code == 422 and "`inputs` tokens must be <= 16" in long.json()["error"]
    empty = engine.http.post("/generate", json={"inputs": "", "parameters": {}})
    assert empty.status_code == 422 and "`inputs` cannot be empty" in empty.json()["error"]


def test_best_of_is_refused_when_streaming(engine):
    response = engine.http.post(
        "/generate_stream",
        json={"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": True}},
    )
    assert response.status_code == 422
    assert "`best_of` != 1 is not allowed for this endpoint" in response.json()["error"]


def test_a_body_that_is_not_a_request(engine):
    missing = engine.http.post("/generate", json={"parameters": {}})
    assert missing.status_code == 422 and missing.json()["error_type"] == "validation"
    garbage = engine.http.post(
        "/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 422 and garbage.json()["error_type"] == "validation"


def _assert_tgi_error(response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body


@pytest.mark.parametrize("engine_overrides", [{"max_body_bytes": 2048}])
def test_every_error_is_in_tgi_shape_whatever_its_cause(engine):
    _assert_tgi_error(engine.http.get("/no/such/route"), 404, "not_found")
    _assert_tgi_error(engine.http.get("/generate"), 405, "method_not_allowed")
    json_header = {"content-type": "application/json"}
    invalid_utf8 = engine.http.post("/generate", content=b'{"inputs": "\xff"}', headers=json_header)
    _assert_tgi_error(invalid_utf8, 422, "validation")
    declared = engine.http.post("/generate", json={"inputs": "x" * 5000})
    _assert_tgi_error(declared, 413, "validation")

    def chunks():
        yield b'{"inputs": "'
        for _ in range(5):
            yield b"x" * 1000
        yield b'"}'

    chunked = engine.http.post("/generate", content=chunks(), headers=json_header)
    _assert_tgi_error(chunked, 413, "validation")
    assert engine.http.post("/generate", json={"inputs": "Hi"}).status_code == 200
