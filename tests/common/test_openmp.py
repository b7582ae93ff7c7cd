"""One-off torch work runs on a thread of its own, which has ended when the call returns."""

from __future__ import annotations

import threading

import pytest

from services.common.openmp import in_passing_thread


def test_the_work_runs_on_another_thread_that_is_gone_after():
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert in_passing_thread(work) == 42
    [thread] = ran_on
    assert thread is not threading.current_thread()
    assert not thread.is_alive()


def test_an_exception_reaches_the_caller_as_raised():
    def work() -> None:
        raise KeyError("policy/v9")

    with pytest.raises(KeyError, match="policy/v9"):
        in_passing_thread(work)
