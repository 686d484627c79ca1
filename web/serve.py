"""Serve web/ on 127.0.0.1 (build it first: web/build.sh).

Usage: python3 web/serve.py [PORT] [--no-isolation]

With the two headers that make the page cross-origin isolated (Cross-Origin-Opener-Policy and
Cross-Origin-Embedder-Policy), so that it may share memory between threads and the threaded CPU
build runs; `--no-isolation` serves without them (the page then trains on one thread), as a host
that cannot set headers would.
"""

import functools
import http.server
import sys
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    isolated = True

    def end_headers(self):
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):
        pass


def main() -> None:
    args = sys.argv[1:]
    Handler.isolated = "--no-isolation" not in args
    ports = [a for a in args if a != "--no-isolation"]
    port = int(ports[0]) if ports else 8000
    web = Path(__file__).resolve().parent
    handler = functools.partial(Handler, directory=str(web))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
