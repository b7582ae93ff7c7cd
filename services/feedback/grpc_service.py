"""The gRPC API for other services (feedback.proto): RecordInteraction, GetInteraction,
ExportComparisons and Stats, translated onto FeedbackCore."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.chat_contract import CHAT_ROLES
from services.common.generated.flywheel.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.common.grpc_errors import invalid_argument
from services.feedback import metrics
from services.feedback.core import FeedbackCore
from services.feedback.errors import GRPC_CODE, RefusalKind, Refused, StorageUnavailable
from services.feedback.store.interactions import NewInteraction

log = logging.getLogger(__name__)

_ID_MAX = 64
_SOURCES = {
    "ranking": feedback_pb2.FEEDBACK_KIND_RANKING,
    "thumb": feedback_pb2.FEEDBACK_KIND_THUMBS,
    "pairwise": feedback_pb2.FEEDBACK_KIND_PAIRWISE,
}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(message, field: str) -> datetime | None:
    return getattr(message, field).ToDatetime(tzinfo=UTC) if message.HasField(field) else None


def _check_interaction(i: feedback_pb2.Interaction) -> list[tuple[str, str]]:
    problems = []
    if not i.response_id:
        problems.append(("interaction.response_id", "required"))
    for name in (
        "response_id",
        "candidate_group",
        "conversation_id",
        "model_version",
        "api_key_id",
    ):
        if len(getattr(i, name)) > _ID_MAX:
            problems.append((f"interaction.{name}", f"at most {_ID_MAX} characters"))
    if not i.feedback_token:
        problems.append(("interaction.feedback_token", "required"))
    if not i.messages:
        problems.append(("interaction.messages", "the prompt needs at least one message"))
    for n, message in enumerate(i.messages):
        if message.role not in CHAT_ROLES:
            problems.append((f"interaction.messages[{n}].role", f"one of {', '.join(CHAT_ROLES)}"))
    count = i.candidate_count or 1
    if i.candidate_count < 0 or not 0 <= i.candidate_index < count:
        problems.append(
            ("interaction.candidate_index", "must be in [0, candidate_count) with count >= 1")
        )
    return problems


def _new_interaction(i: feedback_pb2.Interaction) -> NewInteraction:
    return NewInteraction(
        response_id=i.response_id,
        conversation_id=i.conversation_id or i.response_id,
        messages=[{"role": m.role, "content": m.content} for m in i.messages],
        answer=i.answer,
        # A lone answer (n = 1) is its own group.
        candidate_group=i.candidate_group or i.response_id,
        candidate_index=i.candidate_index,
        candidate_count=i.candidate_count or 1,
        model_version=i.model_version,
        sampling=json_format.MessageToDict(i.sampling, preserving_proto_field_name=True),
        api_key_id=i.api_key_id,
        feedback_token=i.feedback_token,
        created_at=_datetime(i, "created_at"),
    )


def _interaction_message(row: dict) -> feedback_pb2.Interaction:
    return feedback_pb2.Interaction(
        response_id=row["response_id"],
        conversation_id=row["conversation_id"],
        messages=[common_pb2.ChatMessage(**m) for m in row["messages"]],
        answer=row["answer"],
        candidate_group=row["candidate_group"],
        candidate_index=row["candidate_index"],
        candidate_count=row["candidate_count"],
        model_version=row["model_version"],
        sampling=json_format.ParseDict(row["sampling"], common_pb2.SamplingParams()),
        api_key_id=row["api_key_id"],
        created_at=_timestamp(row["created_at"]),
    )


def _group_message(group: dict) -> feedback_pb2.ComparisonGroup:
    return feedback_pb2.ComparisonGroup(
        comparison_id=group["comparison_id"],
        source=_SOURCES[group["source"]],
        prompt=[common_pb2.ChatMessage(**m) for m in group["prompt"]],
        candidates=[
            feedback_pb2.Candidate(
                response_id=a["response_id"], text=a["answer"], model_version=a["model_version"]
            )
            for a in group["answers"]
        ],
        pairs=[feedback_pb2.ComparisonPair(better=b, worse=w) for b, w in group["pairs"]],
        candidate_group=group["candidate_group"],
        api_key_id=group["rater_key_id"],
        recorded_at=_timestamp(group["recorded_at"]),
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, core: FeedbackCore) -> None:
        self._core = core

    def _fail(self, context: grpc.ServicerContext, error: Exception):
        if isinstance(error, Refused):
            if error.kind in (RefusalKind.INVALID, RefusalKind.BAD_WINDOW):
                context.abort_with_status(invalid_argument([(error.code, error.message)]))
            context.abort(GRPC_CODE[error.kind], f"{error.code}: {error.message}")
        if isinstance(error, StorageUnavailable):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"storage unavailable: {error}")
        raise error

    def _observe(self, method: str, started: float, status: str) -> None:
        metrics.REQUEST_LATENCY.labels("grpc", method, status).observe(
            time.perf_counter() - started
        )

    def RecordInteraction(self, request, context):
        started = time.perf_counter()
        problems = _check_interaction(request.interaction)
        if problems:
            self._observe("RecordInteraction", started, "INVALID_ARGUMENT")
            context.abort_with_status(invalid_argument(problems))
        try:
            created = self._core.record_interaction(_new_interaction(request.interaction))
        except (Refused, StorageUnavailable) as error:
            self._observe("RecordInteraction", started, "ERROR")
            self._fail(context, error)
        self._observe("RecordInteraction", started, "OK")
        return feedback_pb2.RecordInteractionResponse(created=created)

    def GetInteraction(self, request, context):
        try:
            row = self._core.get_interaction(request.response_id, credential=None)
        except Refused as error:
            self._fail(context, error)
        return feedback_pb2.GetInteractionResponse(interaction=_interaction_message(row))

    def ExportComparisons(self, request, context):
        settings = self._core.settings
        page_size = request.page_size or settings.export_page_size
        if page_size < 0:
            context.abort_with_status(invalid_argument([("page_size", "must be >= 0")]))
        page_size = min(page_size, settings.export_max_page_size)
        try:
            snapshot = self._core.start_export(
                _datetime(request, "since"), _datetime(request, "until")
            )
        except (Refused, StorageUnavailable) as error:
            self._fail(context, error)
        window = {
            "snapshot_id": snapshot.id,
            "since": _timestamp(snapshot.since),
            "until": _timestamp(snapshot.until),
        }
        pages = list(range(0, max(1, len(snapshot.revision_ids)), page_size))
        for index, groups in enumerate(self._core.export_pages(snapshot, page_size)):
            if not context.is_active():
                log.info("export %s cancelled by the client at page %d", snapshot.id, index)
                return
            last = index == len(pages) - 1
            yield feedback_pb2.ComparisonPage(
                **window,
                page_index=index,
                groups=[_group_message(g) for g in groups],
                last=last,
                total_groups=snapshot.total_groups if last else 0,
                total_pairs=snapshot.total_pairs if last else 0,
            )
        if not snapshot.revision_ids:
            yield feedback_pb2.ComparisonPage(**window, page_index=0, last=True)

    def Stats(self, request, context):
        stats = self._core.stats(
            _datetime(request, "comparisons_since"), _datetime(request, "thumbs_since")
        )
        events = stats["events"]
        return feedback_pb2.StatsResponse(
            interactions=stats["interactions"],
            feedback_events=feedback_pb2.FeedbackCounts(
                ranking=events["ranking"], thumbs=events["thumb"], pairwise=events["pairwise"]
            ),
            comparisons_pending=stats["comparisons_pending"],
            comparison_groups_pending=stats["comparison_groups_pending"],
            outbox_backlog=stats["outbox_backlog"],
            thumbs=[
                feedback_pb2.ModelVersionThumbs(model_version=v, thumbs_up=up, thumbs_down=down)
                for v, up, down in stats["thumbs"]
            ],
            as_of=_timestamp(datetime.now(UTC)),
        )
