"""A fake Kubernetes API server for the Kubernetes executor's tests.

No Kubernetes cluster can run on the test machine, so this stands in for the API server: a
real HTTP server on 127.0.0.1 (``http.server.ThreadingHTTPServer`` in a thread) that answers
the real REST paths with the real JSON shapes, so the official ``kubernetes`` client, pointed
at it, is exercised end to end (URLs, query parameters, request bodies, deserialisation).

It implements only what the executor uses:

- ``POST   /apis/batch/v1/namespaces/{ns}/jobs``                (create; 409 if it exists)
- ``GET    /apis/batch/v1/namespaces/{ns}/jobs/{name}[/status]`` (read)
- ``DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}``          (foreground deletion)
- ``GET    /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...``   (list)
- ``GET    /api/v1/namespaces/{ns}/pods/{pod}/log?tailLines=N``  (text/plain)

Each Job follows a :class:`JobScript`: it runs for a number of reads of its status, then
completes or fails as scripted (with or without a pod), or runs until it is deleted. Every
request is recorded, so tests can assert what the executor sent.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from kubernetes.client import ApiClient, BatchV1Api, Configuration, CoreV1Api

Outcome = Literal["succeed", "fail", "deadline", "run_until_deleted"]

JOB_PATH = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$")
ONE_JOB_PATH = re.compile(
    r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)(?P<status>/status)?$"
)
PODS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")


@dataclass
class JobScript:
    """How a fake Job behaves."""

    outcome: Outcome = "succeed"
    # Reads of the Job (GET) before it shows its Complete or Failed condition.
    reads_until_done: int = 2
    # The stage container's exit code when it ends (0 for "succeed").
    exit_code: int = 0
    log_lines: list[str] = field(default_factory=lambda: ["loading", "step 1", "done"])
    # Not 200: reading the pod's log answers this status (a kubelet that does not answer).
    log_status: int = 200
    # Reads that still see the Job (with a deletionTimestamp) after its DELETE.
    reads_until_gone: int = 1

    @classmethod
    def succeeds(cls, after_reads: int = 2, log_lines: list[str] | None = None) -> JobScript:
        script = cls(outcome="succeed", reads_until_done=after_reads, exit_code=0)
        if log_lines is not None:
            script.log_lines = log_lines
        return script

    @classmethod
    def fails(cls, exit_code: int, after_reads: int = 2, **kwargs: Any) -> JobScript:
        return cls(outcome="fail", reads_until_done=after_reads, exit_code=exit_code, **kwargs)

    @classmethod
    def deadline_exceeded(cls, after_reads: int = 2) -> JobScript:
        """Killed at activeDeadlineSeconds before a pod ever ran (e.g. never scheduled)."""
        return cls(outcome="deadline", reads_until_done=after_reads, log_lines=[])

    @classmethod
    def runs_until_deleted(cls, reads_until_gone: int = 2) -> JobScript:
        return cls(outcome="run_until_deleted", reads_until_gone=reads_until_gone)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_error(code: int, reason: str, message: str, name: str = "") -> dict:
    """A metav1.Status, the body of every API error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": "batch", "kind": "jobs"},
        "code": code,
    }


class _FakeJob:
    """One Job and its (single) pod, as the Job controller and kubelet would report them."""

    _pod_suffixes = itertools.count(1)

    def __init__(self, manifest: dict, script: JobScript) -> None:
        self.manifest = manifest
        self.script = script
        self.name = manifest["metadata"]["name"]
        self.namespace = manifest["metadata"].get("namespace", "default")
        self.uid = str(uuid.uuid4())
        self.created = _now()
        self.reads = 0
        self.deletion_timestamp: str | None = None
        self.reads_since_delete = 0
        self.pod_name = f"{self.name}-{next(self._pod_suffixes):05d}"

    # --- state -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.script.outcome != "run_until_deleted" and (
            self.reads >= self.script.reads_until_done
        )

    @property
    def has_pod(self) -> bool:
        return self.script.outcome != "deadline" and self.deletion_timestamp is None

    def read(self) -> None:
        self.reads += 1
        if self.deletion_timestamp is not None:
            self.reads_since_delete += 1

    @property
    def gone(self) -> bool:
        return (
            self.deletion_timestamp is not None
            and self.reads_since_delete >= self.script.reads_until_gone
        )

    # --- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict:
        body = json.loads(json.dumps(self.manifest))
        metadata = body["metadata"]
        metadata.update(uid=self.uid, creationTimestamp=self.created, resourceVersion="1")
        metadata["labels"] = {**metadata.get("labels", {}), "controller-uid": self.uid}
        if self.deletion_timestamp is not None:
            metadata["deletionTimestamp"] = self.deletion_timestamp
            metadata["finalizers"] = ["foregroundDeletion"]
        body["status"] = self._status()
        return body

    def _status(self) -> dict:
        status: dict[str, Any] = {"startTime": self.created}
        if not self.finished:
            status.update(active=1, ready=1 if self.has_pod else 0)
            return status
        now = _now()
        if self.script.outcome == "succeed":
            status.update(
                succeeded=1,
                completionTime=now,
                conditions=[
                    self._condition("SuccessCriteriaMet", "CompletionsReached", ""),
                    self._condition("Complete", "CompletionsReached", "Reached expected number"),
                ],
            )
        elif self.script.outcome == "fail":
            message = "Job has reached the specified backoff limit"
            status.update(
                failed=1,
                conditions=[
                    self._condition("FailureTarget", "BackoffLimitExceeded", message),
                    self._condition("Failed", "BackoffLimitExceeded", message),
                ],
            )
        else:
            message = "Job was active longer than specified deadline"
            status.update(
                failed=0,
                conditions=[
                    self._condition("FailureTarget", "DeadlineExceeded", message),
                    self._condition("Failed", "DeadlineExceeded", message),
                ],
            )
        return status

    @staticmethod
    def _condition(kind: str, reason: str, message: str) -> dict:
        now = _now()
        return {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }

    def pod_json(self) -> dict:
        template = self.manifest["spec"]["template"]
        labels = {
            **template["metadata"].get("labels", {}),
            "job-name": self.name,
            "batch.kubernetes.io/job-name": self.name,
            "controller-uid": self.uid,
        }
        container = template["spec"]["containers"][0]
        if self.finished:
            code = self.script.exit_code
            state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": self.created,
                    "finishedAt": _now(),
                }
            }
            phase = "Succeeded" if code == 0 else "Failed"
        else:
            state = {"running": {"startedAt": self.created}}
            phase = "Running"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name,
                "namespace": self.namespace,
                "labels": labels,
                "creationTimestamp": self.created,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.pod_name)),
            },
            "spec": template["spec"],
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "started": phase == "Running",
                        "state": state,
                    }
                ],
            },
        }


class FakeKubeApi:
    """The fake API server. Use as a context manager; ``batch_api``/``core_api`` are real
    ``kubernetes`` client objects talking to it over HTTP."""

    def __init__(self, default_script: JobScript | None = None) -> None:
        self.default_script = default_script or JobScript()
        # Scripts for Jobs not created yet, by name; others follow default_script.
        self.scripts: dict[str, JobScript] = {}
        self.requests: list[RecordedRequest] = []
        # The next this many reads of a Job answer 503 (an API server restarting).
        self.unavailable_job_reads = 0
        self._jobs: dict[tuple[str, str], _FakeJob] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, at the end of every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-kube-api",
            daemon=True,
        )
        self._api_client: ApiClient | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._api_client is not None:
            self._api_client.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- the real client, pointed here -------------------------------------------------------

    def api_client(self) -> ApiClient:
        if self._api_client is None:
            self._api_client = ApiClient(Configuration(host=self.host))
        return self._api_client

    def batch_api(self) -> BatchV1Api:
        return BatchV1Api(self.api_client())

    def core_api(self) -> CoreV1Api:
        return CoreV1Api(self.api_client())

    # --- scripting and inspection ------------------------------------------------------------

    def add_existing_job(self, manifest: dict, script: JobScript, reads: int = 0) -> None:
        """A Job created before the test (by an earlier worker), ``reads`` reads into its life."""
        job = _FakeJob(manifest, script)
        job.reads = reads
        with self._lock:
            self._jobs[(job.namespace, job.name)] = job

    def job_names(self, namespace: str) -> list[str]:
        with self._lock:
            return [name for ns, name in self._jobs if ns == namespace]

    def requests_matching(self, method: str, path_pattern: str) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.method == method and re.search(path_pattern, r.path)
            ]

    # --- HTTP --------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: the client's urllib3 pool keeps connections alive, as with a real server.
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without TCP_NODELAY each answer
            # would wait for the client's delayed ACK (tens of milliseconds).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the tests' output stays readable

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with api._lock:
                    api.requests.append(RecordedRequest(method, url.path, query, body))
                    code, payload = api._route(method, url.path, query, body)
                if isinstance(payload, str):
                    self._send(code, payload.encode(), "text/plain")
                else:
                    self._send(code, json.dumps(payload).encode(), "application/json")

            def _send(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, dict | str]:
        """Answer one request (called with the lock held)."""
        if method == "POST" and (match := JOB_PATH.match(path)):
            return self._create_job(match["ns"], body)
        if match := ONE_JOB_PATH.match(path):
            if method == "GET":
                return self._read_job(match["ns"], match["name"])
            if method == "DELETE":
                return self._delete_job(match["ns"], match["name"], body)
        if method == "GET" and (match := PODS_PATH.match(path)):
            return self._list_pods(match["ns"], query.get("labelSelector", ""))
        if method == "GET" and (match := POD_LOG_PATH.match(path)):
            return self._pod_log(match["ns"], match["pod"], query)
        return HTTPStatus.NOT_FOUND, _status_error(
            404, "NotFound", "the server could not find the requested resource"
        )

    def _live_job(self, namespace: str, name: str) -> _FakeJob | None:
        job = self._jobs.get((namespace, name))
        if job is not None and job.gone:
            del self._jobs[(namespace, name)]
            return None
        return job

    def _not_found(self, name: str) -> tuple[int, dict]:
        return HTTPStatus.NOT_FOUND, _status_error(
            404, "NotFound", f'jobs.batch "{name}" not found', name
        )

    def _create_job(self, namespace: str, manifest: dict) -> tuple[int, dict]:
        name = manifest["metadata"]["name"]
        if manifest["metadata"].get("namespace", namespace) != namespace:
            return HTTPStatus.BAD_REQUEST, _status_error(400, "BadRequest", "namespace mismatch")
        if self._live_job(namespace, name) is not None:
            return HTTPStatus.CONFLICT, _status_error(
                409, "AlreadyExists", f'jobs.batch "{name}" already exists', name
            )
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        job = _FakeJob(manifest, self.scripts.get(name, self.default_script))
        self._jobs[(namespace, name)] = job
        return HTTPStatus.CREATED, job.to_json()

    def _read_job(self, namespace: str, name: str) -> tuple[int, dict]:
        if self.unavailable_job_reads > 0:
            self.unavailable_job_reads -= 1
            return HTTPStatus.SERVICE_UNAVAILABLE, _status_error(
                503, "ServiceUnavailable", "the server is currently unable to handle the request"
            )
        job = self._live_job(namespace, name)
        if job is None:
            return self._not_found(name)
        job.read()
        if job.gone:
            # This read was the last one that sees it: the garbage collector removed it.
            del self._jobs[(namespace, name)]
            return self._not_found(name)
        return HTTPStatus.OK, job.to_json()

    def _delete_job(self, namespace: str, name: str, options: Any) -> tuple[int, dict]:
        job = self._live_job(namespace, name)
        if job is None:
            return self._not_found(name)
        policy = (options or {}).get("propagationPolicy", "Background")
        if policy != "Foreground":
            del self._jobs[(namespace, name)]
            return HTTPStatus.OK, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if job.deletion_timestamp is None:
            job.deletion_timestamp = _now()
        return HTTPStatus.OK, job.to_json()

    def _list_pods(self, namespace: str, selector: str) -> tuple[int, dict]:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        pods = []
        for (ns, name), job in list(self._jobs.items()):
            if ns != namespace or self._live_job(ns, name) is None or not job.has_pod:
                continue
            pod = job.pod_json()
            labels = pod["metadata"]["labels"]
            if all(labels.get(key) == value for key, value in wanted.items()):
                pods.append(pod)
        return HTTPStatus.OK, {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": "1"},
            "items": pods,
        }

    def _pod_log(self, namespace: str, pod_name: str, query: dict) -> tuple[int, dict | str]:
        job = next(
            (
                job
                for (ns, _), job in self._jobs.items()
                if ns == namespace and job.pod_name == pod_name and job.has_pod
            ),
            None,
        )
        if job is None:
            return HTTPStatus.NOT_FOUND, _status_error(
                404, "NotFound", f'pods "{pod_name}" not found', pod_name
            )
        if job.script.log_status != 200:
            return job.script.log_status, _status_error(
                job.script.log_status, "InternalError", "error talking to the kubelet"
            )
        lines = job.script.log_lines
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]) :]
        return HTTPStatus.OK, "".join(f"{line}\n" for line in lines)
