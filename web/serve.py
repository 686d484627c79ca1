"""Serve web/ on 127.0.0.1 (build it first: web/build.sh).

Usage: python3 web/serve.py [PORT] [--no-isolation]

With the two headers that make the page cross-origin isolated (Cross-Origin-Opener-Policy and
Cross-Origin-Embedder-Policy), so that it may share memory between threads and the threaded CPU
build runs; `--no-isolation` serves without them (the page then trains on one thread), as a host
that cannot set headers would.
"""

import argparse
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
    parser = argparse.ArgumentParser(description="Serve web/ on 127.0.0.1.")
    parser.add_argument("port", nargs="?", type=int, default=8000)
    parser.add_argument("--no-isolation", action="store_true",
                        help="leave out the cross-origin isolation headers (one thread)")
    args = parser.parse_args()
    Handler.isolated = not args.no_isolation
    web = Path(__file__).resolve().parent
    handler = functools.partial(Handler, directory=str(web))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    except OSError as error:
        sys.exit(f"error: cannot serve on 127.0.0.1:{args.port}: {error.strerror}")
    with server:
        print(f"fairtune web demo: http://127.0.0.1:{args.port}/", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
