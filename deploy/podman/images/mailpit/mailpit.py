#!/usr/bin/python3
"""Stand-in for Mailpit: `mailpit` serves SMTP on :1025 and HTTP on :8025;
`mailpit readyz` exits 0 when the HTTP side answers /readyz (the compose
healthcheck). Messages are counted, not stored."""

import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SMTP_PORT, HTTP_PORT = 1025, 8025
received = {"total": 0, "recipients": 0}
lock = threading.Lock()


class Handler:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
        with lock:
            received["total"] += 1
            received["recipients"] += len(envelope.rcpt_tos)
        return "250 Message accepted for delivery"


class Http(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path in ("/readyz", "/livez"):
            body, code = b"ok", 200
        elif self.path.split("?")[0] == "/api/v1/messages":
            with lock:
                body, code = json.dumps({**received, "messages": []}).encode(), 200
        else:
            body, code = b"not found", 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve() -> None:
    from aiosmtpd.controller import Controller

    smtp = Controller(Handler(), hostname="0.0.0.0", port=SMTP_PORT)
    smtp.start()
    print(f"stand-in mailpit: SMTP :{SMTP_PORT}, HTTP :{HTTP_PORT}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", HTTP_PORT), Http).serve_forever()


def readyz() -> int:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/readyz", timeout=3)
    except OSError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["readyz"]:
        sys.exit(readyz())
    serve()
    while True:
        time.sleep(3600)
