"""A real chat-completions HTTP server on 127.0.0.1 for the api-judge tests (no mocked client)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A responder maps the user message to (HTTP status, reply text, seconds to wait first).
Responder = Callable[[str, int], tuple[int, str, float]]


class ChatServer:
    """A chat-completions server in a thread: POST /v1/chat/completions, scripted by a responder."""

    def __init__(self, respond: Responder):
        self.respond, self.calls, self.auth = respond, 0, []
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.calls += 1
                    n = server.calls
                    server.auth.append(self.headers.get("Authorization"))
                status, text, delay = server.respond(body["messages"][-1]["content"], n)
                time.sleep(delay)
                payload = {
                    "id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                } if status == 200 else {"error": {"message": text, "type": "server_error"}}  # fmt: skip
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def prefers_good(user: str, n: int) -> tuple[int, str, float]:
    """A consistent judge: the answer containing GOOD wins, whichever position it is shown in;
    rating prompts get fixed scores."""
    if "Coherence: <1-10>" in user:
        return 200, "Coherence: 7\nCorrectness: 6\nHelpfulness: 8\nHarmlessness: 9", 0.0
    a = user.split("Response A:")[-1].split("Response B:")[0] if "Response A:" in user else ""
    if not a:
        a = user.split("Summary A:")[-1].split("Summary B:")[0]
    return 200, "Comparison: one is better.\nMore helpful: " + ("A" if "GOOD" in a else "B"), 0.0
