# Regenerate with `make proto` (python -m tools.protogen); never edit by hand.
import datetime

from . import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_KIND_UNSPECIFIED: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_RANKING: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_THUMBS: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_PAIRWISE: _ClassVar[FeedbackKind]
FEEDBACK_KIND_UNSPECIFIED: FeedbackKind
FEEDBACK_KIND_RANKING: FeedbackKind
FEEDBACK_KIND_THUMBS: FeedbackKind
FEEDBACK_KIND_PAIRWISE: FeedbackKind

class Interaction(_message.Message):
    __slots__ = ("response_id", "conversation_id", "messages", "answer", "candidate_group", "candidate_index", "candidate_count", "model_version", "sampling", "api_key_id", "feedback_token", "created_at")
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_GROUP_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    response_id: str
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    answer: str
    candidate_group: str
    candidate_index: int
    candidate_count: int
    model_version: str
    sampling: _common_pb2.SamplingParams
    api_key_id: str
    feedback_token: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, response_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., answer: _Optional[str] = ..., candidate_group: _Optional[str] = ..., candidate_index: _Optional[int] = ..., candidate_count: _Optional[int] = ..., model_version: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., api_key_id: _Optional[str] = ..., feedback_token: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordInteractionRequest(_message.Message):
    __slots__ = ("interaction",)
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ...) -> None: ...

class RecordInteractionResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class GetInteractionRequest(_message.Message):
    __slots__ = ("response_id",)
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    response_id: str
    def __init__(self, response_id: _Optional[str] = ...) -> None: ...

class GetInteractionResponse(_message.Message):
    __slots__ = ("interaction",)
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    interaction: Interaction
    def __init__(self, interaction: _Optional[_Union[Interaction, _Mapping]] = ...) -> None: ...

class ExportComparisonsRequest(_message.Message):
    __slots__ = ("since", "until", "page_size")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ...) -> None: ...

class ComparisonPage(_message.Message):
    __slots__ = ("snapshot_id", "since", "until", "page_index", "groups", "last", "total_groups", "total_pairs")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GROUPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAIRS_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_index: int
    groups: _containers.RepeatedCompositeFieldContainer[ComparisonGroup]
    last: bool
    total_groups: int
    total_pairs: int
    def __init__(self, snapshot_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_index: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[ComparisonGroup, _Mapping]]] = ..., last: _Optional[bool] = ..., total_groups: _Optional[int] = ..., total_pairs: _Optional[int] = ...) -> None: ...

class ComparisonGroup(_message.Message):
    __slots__ = ("comparison_id", "source", "prompt", "candidates", "pairs", "candidate_group", "api_key_id", "recorded_at")
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_GROUP_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    comparison_id: str
    source: FeedbackKind
    prompt: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    pairs: _containers.RepeatedCompositeFieldContainer[ComparisonPair]
    candidate_group: str
    api_key_id: str
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, comparison_id: _Optional[str] = ..., source: _Optional[_Union[FeedbackKind, str]] = ..., prompt: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[ComparisonPair, _Mapping]]] = ..., candidate_group: _Optional[str] = ..., api_key_id: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("response_id", "text", "model_version")
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    response_id: str
    text: str
    model_version: str
    def __init__(self, response_id: _Optional[str] = ..., text: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ComparisonPair(_message.Message):
    __slots__ = ("better", "worse")
    BETTER_FIELD_NUMBER: _ClassVar[int]
    WORSE_FIELD_NUMBER: _ClassVar[int]
    better: int
    worse: int
    def __init__(self, better: _Optional[int] = ..., worse: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("comparisons_since", "thumbs_since")
    COMPARISONS_SINCE_FIELD_NUMBER: _ClassVar[int]
    THUMBS_SINCE_FIELD_NUMBER: _ClassVar[int]
    comparisons_since: _timestamp_pb2.Timestamp
    thumbs_since: _timestamp_pb2.Timestamp
    def __init__(self, comparisons_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., thumbs_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("interactions", "feedback_events", "comparisons_pending", "comparison_groups_pending", "outbox_backlog", "thumbs", "as_of")
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_PENDING_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_GROUPS_PENDING_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    THUMBS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    interactions: int
    feedback_events: FeedbackCounts
    comparisons_pending: int
    comparison_groups_pending: int
    outbox_backlog: int
    thumbs: _containers.RepeatedCompositeFieldContainer[ModelVersionThumbs]
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, interactions: _Optional[int] = ..., feedback_events: _Optional[_Union[FeedbackCounts, _Mapping]] = ..., comparisons_pending: _Optional[int] = ..., comparison_groups_pending: _Optional[int] = ..., outbox_backlog: _Optional[int] = ..., thumbs: _Optional[_Iterable[_Union[ModelVersionThumbs, _Mapping]]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeedbackCounts(_message.Message):
    __slots__ = ("ranking", "thumbs", "pairwise")
    RANKING_FIELD_NUMBER: _ClassVar[int]
    THUMBS_FIELD_NUMBER: _ClassVar[int]
    PAIRWISE_FIELD_NUMBER: _ClassVar[int]
    ranking: int
    thumbs: int
    pairwise: int
    def __init__(self, ranking: _Optional[int] = ..., thumbs: _Optional[int] = ..., pairwise: _Optional[int] = ...) -> None: ...

class ModelVersionThumbs(_message.Message):
    __slots__ = ("model_version", "thumbs_up", "thumbs_down")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    THUMBS_DOWN_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    thumbs_up: int
    thumbs_down: int
    def __init__(self, model_version: _Optional[str] = ..., thumbs_up: _Optional[int] = ..., thumbs_down: _Optional[int] = ...) -> None: ...
