"""merge: items of several async iterators as they come, errors raised, early exit cancels."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from services.common.aio import merge


async def counting(name: str, n: int, delay: float):
    for i in range(n):
        await asyncio.sleep(delay)
        yield f"{name}{i}"


def test_every_item_arrives_tagged_with_its_source():
    async def run():
        return [x async for x in merge([counting("a", 3, 0.001), counting("b", 2, 0.002)])]

    items = asyncio.run(run())
    assert sorted(items) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [item for index, item in items if index == 0] == ["a0", "a1", "a2"]


def test_a_failing_source_raises_in_the_consumer():
    async def failing():
        yield "x"
        raise ValueError("engine failed")

    async def run():
        return [x async for x in merge([failing(), counting("a", 100, 0.01)])]

    with pytest.raises(ValueError, match="engine failed"):
        asyncio.run(run())


def test_leaving_early_cancels_the_sources():
    finished = []

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.001)
                yield 1
        finally:
            finished.append(True)

    async def run():
        async with aclosing(merge([endless(), endless()])) as items:
            async for _ in items:
                break
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert finished == [True, True]
