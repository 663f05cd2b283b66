"""A local Lambda Runtime API endpoint: the plain-HTTP interface a runtime client polls.

`GET /2018-06-01/runtime/invocation/next` hands out the queued events (blocking until one is
queued), `POST .../invocation/{id}/response|error` and `POST .../init/error` record the results.
The tests and the benchmark run the real `awslambdaric` against it, in a subprocess or inside
the built image, exactly as Lambda would drive it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


@dataclass
class Result:
    request_id: str
    ok: bool
    body: object
    answered_at: float = field(default_factory=time.perf_counter)


class RuntimeApi:
    """Serves on 127.0.0.1 (or `host`); `address` is what AWS_LAMBDA_RUNTIME_API takes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._results: dict[str, queue.Queue[Result]] = {}
        self.init_errors: list[object] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self.send_error(404)
                    return
                rid, body = api._events.get()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", rid)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000)
                                                                   + 60_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:eu-west-1:000000000000:function:pdm-local")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-local")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(data) if data else None
                except json.JSONDecodeError:
                    doc = data.decode(errors="replace")
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_errors.append(doc)
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response",
                                                                                   "error"):
                    api._result(parts[1]).put(Result(parts[1], parts[2] == "response", doc))
                else:
                    self.send_error(404)
                    return
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _result(self, rid: str) -> queue.Queue[Result]:
        return self._results.setdefault(rid, queue.Queue())

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def __enter__(self) -> RuntimeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def submit(self, event: object) -> str:
        rid = uuid.uuid4().hex
        self._result(rid)
        self._events.put((rid, json.dumps(event).encode()))
        return rid

    def wait(self, rid: str, timeout: float = 60) -> Result:
        try:
            return self._result(rid).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer to invocation {rid} within {timeout} s "
                               f"(init errors: {self.init_errors})") from None

    def invoke(self, event: object, timeout: float = 60) -> Result:
        return self.wait(self.submit(event), timeout)
