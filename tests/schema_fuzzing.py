"""Schema fuzzing of a running HTTP API with Schemathesis, bounded for the default suite.

The API's own OpenAPI document (fetched from the live server on loopback) drives the
requests: valid ones (positive mode) and ones that break the schema (negative mode). Every
answer must be no 5xx, a status the document lists for the route, a documented content type,
and a body matching the documented schema; schema-breaking requests must be refused (4xx).

``positive_data_acceptance`` (a schema-valid request must succeed) is left out: limits that
depend on settings and state (the largest ``n``, the token budget, whether an answer id was
ever served) cannot be written into a static schema, and those refusals are 4xx that the other
checks still hold to the documented shapes.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance


def fuzz_api(
    base_url: str,
    *,
    headers: dict[str, str] | None = None,
    max_examples: int = 20,
    excluded_checks=(positive_data_acceptance,),
) -> dict[str, int]:
    """Fuzz every operation in both modes; returns how many calls each operation got."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} [{mode.value}]"
            calls[label] = 0
            _fuzz_operation(
                operation, mode, label, calls, base_url, headers, excluded_checks, max_examples
            )
    return calls


def _fuzz_operation(operation, mode, label, calls, base_url, headers, excluded_checks, examples):
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        calls[label] += 1
        case.call_and_validate(
            base_url=base_url,
            headers=headers,
            excluded_checks=list(excluded_checks),
            timeout=60,
        )

    try:
        run()
    except Unsatisfiable:
        # Nothing to break in an operation without parameters or body (GET /info).
        if mode is not GenerationMode.NEGATIVE:
            raise
