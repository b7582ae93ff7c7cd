"""The inference benchmark's arithmetic: percentiles and the per-round ratios it reports."""

from __future__ import annotations

from benchmarks.inference_throughput import Result, distinct, percentile, summary


def result(side: str, concurrency: int, rate: float, first=(), gaps=()) -> Result:
    return Result(side, concurrency, 16, 100, int(rate * 10), 10.0, 0, 0.0, first, gaps)


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_ratios_pair_the_rounds_and_a_line_measured_once_is_divided_into_each():
    results = [
        result("naive", 1, 10.0),
        result("peer", 1, 50.0, first=(0.02, 0.04), gaps=(0.01,)),
        result("ours", 1, 25.0),
        result("peer", 1, 40.0),
        result("ours", 1, 30.0),
    ]
    table = summary(results, concurrency=1)
    # Round by round: 25/50 and 30/40; their median 0.625 (printed half to even) and range.
    assert "| peer | 1 | 0.62 [0.50, 0.75]x |" in table
    # naive ran once: each of ours' rounds over it.
    assert "| naive | 1 | 2.75 [2.50, 3.00]x |" in table
    assert "| peer | 1 | 45.0 [40.0, 50.0] | 20/40 | 10/10 |" in table


def test_each_request_opens_with_its_own_tag_so_only_the_chat_template_is_shared():
    first = distinct(["Explain rain.", "Explain snow."])
    again = distinct(["Explain rain."])
    assert first[0].endswith(" Explain rain.") and first[1].endswith(" Explain snow.")
    # The same text sent again is another prompt: a server cannot serve it from its cache.
    assert len({first[0], first[1], again[0]}) == 3
    assert all(text.startswith("[") for text in first + again)
