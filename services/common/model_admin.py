"""The ModelAdmin gRPC service (admin.proto), shared by every service that serves a model.

A service hands it something that can reload a version and say what serves now; this
module turns that into the contract's replies and status codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.generated.flywheel.v1 import admin_pb2, admin_pb2_grpc
from services.common.registry import RegistryError, VersionNotFoundError


class Served(Protocol):
    version: str
    loaded_at: datetime


class Reloadable(Protocol):
    @property
    def current(self) -> Served | None: ...

    def reload(self, version: str = "") -> tuple[str, str]: ...


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    def __init__(self, role: str, target: Reloadable) -> None:
        self._role = role
        self._target = target

    def Reload(self, request, context):
        try:
            previous, current = self._target.reload(request.version)
        except VersionNotFoundError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except RegistryError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return admin_pb2.ReloadResponse(previous_version=previous, current_version=current)

    def CurrentVersion(self, request, context):
        served = self._target.current
        if served is None:
            return admin_pb2.CurrentVersionResponse(role=self._role)
        loaded_at = Timestamp()
        loaded_at.FromDatetime(served.loaded_at)
        return admin_pb2.CurrentVersionResponse(
            role=self._role, version=served.version, loaded_at=loaded_at
        )
