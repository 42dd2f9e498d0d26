"""A stand-in for the Hugging Face Hub API on loopback: a known token, and a server answering
the access check (whoami) and refusing commits, for one-line error tests.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

GOOD_TOKEN = "hf_good_token_for_tests_only"


class FakeHub(BaseHTTPRequestHandler):
    """The two Hub routes the real client code talks to here: whoami and a rejecting one."""

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/api/whoami-v2":
            if self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}":
                self._reply(200, {"name": "tester", "type": "user"})
            else:
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        self._reply(403, {"error": "You don't have the rights to create a commit here"})

    def log_message(self, *args) -> None:
        pass
