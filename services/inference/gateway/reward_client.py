"""Asking the reward service which of several candidates is best (``best_of``)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from services.common.generated.flywheel.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from services.common.service_auth import aio_service_channel


@dataclass(frozen=True)
class Scores:
    rewards: list[float]
    model_version: str


class RewardUnavailable(Exception):
    """The reward service could not score (down, not loaded, overloaded, too slow)."""


class RewardClient:
    def __init__(self, target: str, service_token: str, timeout_s: float = 10.0) -> None:
        self._target = target
        self._service_token = service_token
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> reward_pb2_grpc.RewardServiceStub:
        # Made on first use: an aio channel belongs to the event loop that creates it.
        if self._channel is None:
            self._channel = aio_service_channel(self._target, self._service_token)
        return reward_pb2_grpc.RewardServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def score(self, messages: list[dict], answers: list[str]) -> Scores:
        request = reward_pb2.ScoreRequest(
            prompt=[common_pb2.ChatMessage(**m) for m in messages], answers=answers
        )
        try:
            reply = await self._stub().Score(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise RewardUnavailable(f"{error.code().name}: {error.details()}") from error
        return Scores(list(reply.rewards), reply.model_version)
