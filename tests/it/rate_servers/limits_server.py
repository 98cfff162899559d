"""A rate-limited HTTP API for rekey's tests and benchmark, built on the `limits`
library (https://limits.readthedocs.io), not on rekey's code.

Every request, whatever its method and path, takes one hit of one shared limit and
is answered 200 `{"ok": true}` or 429. Strategies:

  --strategy moving   a moving (sliding) window: at most N requests in any window,
                      like GitHub's hourly limit; a 429 carries Retry-After, whole
                      seconds until the oldest request leaves the window.
  --strategy fixed    a fixed window with Okta's headers on every answer:
                      X-Rate-Limit-Limit, X-Rate-Limit-Remaining, X-Rate-Limit-Reset
                      (Unix seconds); a 429 carries no Retry-After, as Okta's.

--block-after S --block-for S: from S seconds after the first request, every request
is refused (429, Retry-After: 1) for that long: a block or an outage.

It listens on 127.0.0.1 on a port the OS picks and prints `PORT <n>` once ready.
"""

import argparse
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["moving", "fixed"], required=True)
    parser.add_argument("--limit", type=int, required=True, help="requests per window")
    parser.add_argument("--window", type=int, required=True, help="window in seconds")
    parser.add_argument("--block-after", type=float)
    parser.add_argument("--block-for", type=float, default=0.0)
    args = parser.parse_args()

    storage = MemoryStorage()
    if args.strategy == "moving":
        limiter = MovingWindowRateLimiter(storage)
    else:
        limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(args.limit, args.window)
    lock = threading.Lock()
    first = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            now = time.time()
            with lock:
                if not first:
                    first.append(now)
                start = first[0]
                blocked = (
                    args.block_after is not None
                    and start + args.block_after <= now < start + args.block_after + args.block_for
                )
                admitted = not blocked and limiter.hit(item, "api")
                reset, remaining = limiter.get_window_stats(item, "api")
            headers = {}
            if args.strategy == "fixed":
                headers["X-Rate-Limit-Limit"] = str(args.limit)
                headers["X-Rate-Limit-Remaining"] = str(remaining)
                headers["X-Rate-Limit-Reset"] = str(math.ceil(reset))
            if admitted:
                status, body = 200, {"ok": True}
            else:
                status, body = 429, {"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests."}
                if blocked:
                    headers["Retry-After"] = "1"
                elif args.strategy == "moving":
                    headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
