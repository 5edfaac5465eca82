#!/usr/bin/env python3
"""A webhook subscriber that checks hookrelay's real requests the way a
consumer would: Standard Webhooks requests with the official `standardwebhooks`
package from PyPI, Courier-scheme requests with the few lines of `hmac` the
README shows. Driven by tests/it/consumer.rs; standard library otherwise.

Protocol, one JSON object per line:

stdout, first line
    {"event": "listening", "port": N, "library": "standardwebhooks 1.1.0"}
    or, without the package, {"event": "unavailable", "error": "..."} and exit
    status 3 (the Rust test skips, or fails when HOOKRELAY_REQUIRE_PYTHON=1).
stdin
    `secret whsec_...` replaces the secret requests are checked with; answered
    with {"event": "secret-set", "generation": N}. The secret is never printed.
    End of input stops the server.
stdout, then one line per request
    {"event": "request", "scheme": ..., "webhook_id": ..., "verified": bool,
     "error": exception text or null, "signatures": entries in the signature
     header, "type", "message_id", "status", "seq", "subscription_id",
     "headers": [[name, value], ...], "body": the body as text}

Verified requests are answered 204, everything else 400.
"""

import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import standardwebhooks
    from standardwebhooks.webhooks import Webhook
except ImportError as e:  # reported, not raised: the Rust side decides
    print(json.dumps({"event": "unavailable", "error": str(e)}), flush=True)
    sys.exit(3)

OUTPUT = threading.Lock()
STATE = {"secret": None, "generation": 0}


def emit(record):
    with OUTPUT:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


# The README's Courier check, verbatim.
def verify_courier(secret: str, raw_body: bytes, header: str) -> bool:
    parts = [p.strip().split("=", 1) for p in header.split(",") if "=" in p]
    t = next((v for k, v in parts if k == "t"), "")
    if not t.isdigit() or abs(time.time() * 1000 - int(t)) > 300_000:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "signature")


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, like a production endpoint: hookrelay pools connections.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = dict(self.headers.items())
        secret = STATE["secret"]
        courier = self.headers.get("courier-signature")
        record = {
            "event": "request",
            "scheme": "courier" if courier is not None else "standard-webhooks",
            "webhook_id": self.headers.get("webhook-id"),
            "verified": False,
            "error": None,
            "signatures": 0,
            # The request as received, for checking it again with `hookrelay verify`.
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        payload = None
        try:
            if secret is None:
                raise ValueError("no secret set yet")
            if courier is not None:
                record["signatures"] = courier.count("signature=")
                if not verify_courier(secret, body, courier):
                    raise ValueError("courier-signature does not verify")
                payload = json.loads(body)
            else:
                record["signatures"] = len((self.headers.get("webhook-signature") or "").split())
                payload = Webhook(secret).verify(body, headers)
            record["verified"] = True
        except Exception as e:  # the verdict is the point: record any failure
            record["error"] = f"{type(e).__name__}: {e}"
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        if isinstance(payload, dict):
            data = payload.get("data") or {}
            record.update(
                type=payload.get("type"),
                message_id=data.get("id"),
                status=data.get("status"),
                seq=data.get("seq"),
                subscription_id=data.get("subscription_id"),
            )
        emit(record)
        if record["verified"]:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            answer = json.dumps({"error": record["error"]}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    def log_message(self, format, *args):
        pass  # stdout carries the protocol; nothing else is printed


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emit(
        {
            "event": "listening",
            "port": server.server_address[1],
            "library": f"standardwebhooks {getattr(standardwebhooks, '__version__', '?')}",
        }
    )
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "secret" and argument:
            STATE["secret"] = argument
            STATE["generation"] += 1
            emit({"event": "secret-set", "generation": STATE["generation"]})
        elif command:
            emit({"event": "unknown-command", "command": command})
    server.shutdown()


if __name__ == "__main__":
    main()
