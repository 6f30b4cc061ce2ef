"""Serve the no-op baseline (`bench/noop.py`) exactly as the product is served (bench only).

`webhook.server.serve(settings, make_app=...)` builds the product's server around another
app: the same uvicorn configuration, HTTP protocol (httptools with our limits), TLS context,
uvloop and logging set-up. Only the app differs, so the no-op measures the stack.

    python bench/serve_noop.py --port P --cert tls.crt --key tls.key

Settings come from the environment as for `istio-spiffe-webhook serve`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.noop import NoopApp
from webhook.config import load_settings
from webhook.server import StartupError, serve


def make_noop(settings: Any, readiness: Any, observer: Any) -> NoopApp:
    return NoopApp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(
        host=args.host, port=args.port, tls_cert_file=args.cert, tls_key_file=args.key
    )
    try:
        serve(settings, make_app=make_noop)
    except StartupError as error:
        print(f"serve_noop: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
