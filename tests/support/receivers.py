"""Real local receivers for tests of outgoing messages: an SMTP server (aiosmtpd) and an HTTP
server that records JSON posts, each on a free local port (pytest fixtures)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.support.ops import free_port


@dataclass
class Mailbox:
    """What a local SMTP server received."""

    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server (aiosmtpd) on a free local port."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


@dataclass
class Inbox:
    """What a local HTTP receiver was posted; ``fail`` answers that many requests with 500."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    fail: int = 0


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Inbox]]:
    """A real HTTP server (http.server in a thread) that records JSON posts."""
    inbox = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if inbox.fail > 0:
                inbox.fail -= 1
                self.send_response(500)
                self.end_headers()
                return
            inbox.posts.append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", inbox
    finally:
        server.shutdown()
        server.server_close()
