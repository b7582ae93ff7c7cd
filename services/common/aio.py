"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def merge(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several async iterators as they arrive, each with its source's index.

    An exception in a source is raised here. Leaving early (the consumer stops, e.g. a
    streaming client hung up) cancels every source, so none keeps working for nobody.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                await queue.put((index, item, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((index, None, exc))
            return
        await queue.put((index, _DONE, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                running -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
