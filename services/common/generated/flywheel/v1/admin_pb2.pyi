# Regenerate with `make proto` (python -m tools.protogen); never edit by hand.
import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("previous_version", "current_version")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_version: str
    current_version: str
    def __init__(self, previous_version: _Optional[str] = ..., current_version: _Optional[str] = ...) -> None: ...

class CurrentVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CurrentVersionResponse(_message.Message):
    __slots__ = ("role", "version", "loaded_at")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    role: str
    version: str
    loaded_at: _timestamp_pb2.Timestamp
    def __init__(self, role: _Optional[str] = ..., version: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
