"""A fault-injecting HTTP proxy in front of the moto S3 server, for the transient-fault tests.

Requests pass through unchanged, except those for an object key given a fault:
- "slowdown": answer `503 SlowDown` with S3's XML error body;
- "reset": send the headers and half the body, then reset the connection (RST);
- "stall": wait `stall_seconds` before answering (longer than the client's timeout: it gives up).

A listing request (`?list-type=2&prefix=P`) is keyed "LIST bucket/P"; "PUT bucket/key" (any
method) gives a fault to that method's requests only. Each fault fires for a
number of requests (`times`; None: until `clear()`), so a test chooses faults that clear within
the client's retries or persist through a whole run. `hits` counts the faults served per key.
`latency` delays every request, as the network to a real S3 region would.
"""

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)


class FaultProxy:
    """`with FaultProxy(upstream) as proxy:` serves on `proxy.endpoint` until the block ends."""

    def __init__(self, upstream: str, stall_seconds: float = 30.0, latency: float = 0.0):
        self.upstream = urlsplit(upstream).netloc
        self.stall_seconds, self.latency = stall_seconds, latency
        self.faults: dict[str, list] = {}  # "bucket/key" -> [kind, requests left or None]
        self.hits: Counter = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, key: str, kind: str, times: int | None = None) -> None:
        assert kind in ("slowdown", "reset", "stall"), kind
        with self.lock:
            self.faults[key] = [kind, times]

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def fault_for(self, path: str, method: str = "GET") -> str | None:
        """The fault of this request: one added for "METHOD bucket/key" (e.g. only PUTs), else for the key."""
        url = urlsplit(path)
        key = unquote(url.path).lstrip("/")
        query = parse_qs(url.query)
        if "list-type" in query:
            key = f"LIST {key.rstrip('/')}/{query.get('prefix', [''])[0]}"
        with self.lock:
            for name in (f"{method} {key}", key):
                fault = self.faults.get(name)
                if fault is not None and fault[1] != 0:
                    break
            else:
                return None
            if fault[1] is not None:
                fault[1] -= 1
            self.hits[name] += 1
            return fault[0]


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            body = self._request_body()
            time.sleep(proxy.latency)
            fault = proxy.fault_for(self.path, self.command)
            if fault == "slowdown":
                return self._send(503, {"Content-Type": "application/xml"}, b"" if self.command == "HEAD" else SLOWDOWN_BODY, str(len(SLOWDOWN_BODY)))
            if fault == "stall":
                time.sleep(proxy.stall_seconds)
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            upstream.close()
            reply = {k: v for k, v in answer.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            if fault == "reset" and self.command == "GET" and len(data) > 1:
                self.send_response(answer.status)
                for k, v in reply.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                # SO_LINGER 0: close() sends RST, the client sees "connection reset" mid-body
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self._send(answer.status, reply, b"" if self.command == "HEAD" else data, length)

        def _request_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _send(self, status: int, headers: dict, data: bytes, length: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler
