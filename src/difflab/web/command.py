"""`difflab serve`: start the web app.

    difflab serve                                   # http://127.0.0.1:7860, runs/ checkpoints
    difflab serve --root runs --root ~/models --port 8000
    difflab serve --host 0.0.0.0                    # reachable from other machines: see below

It binds 127.0.0.1, this machine only, unless --host says otherwise: the page runs models on
this machine's CPUs for whoever reaches it and has no login, so exposing it is a choice to
make explicitly. Checkpoints and runs are opened only from under the --root folders (default:
the current folder); the shipped models are always there.

This module holds only the flags and the start; gradio is imported only when the app is
built, so `difflab --help` works without the web extra.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from difflab.argtypes import device_name, float_in, int_in
from difflab.web.app import build_app, launch
from difflab.web.generate import work_root
from difflab.web.limits import Limits, Roots
from difflab.web.models import ModelStore

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULTS = Limits()  # the bounds one request may ask for, unless the flags say otherwise
WEB_EXTRA = "pip install -e '.[web]'"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `difflab serve`, added to its subparser, which then runs `serve_main`."""
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default 127.0.0.1: this machine only; "
                        "0.0.0.0 exposes the app, without a login, to the network)")
    parser.add_argument("--port", type=int_in(1, 65535), default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--root", action="append", metavar="DIR",
                        help="a folder whose checkpoints and runs the app may open "
                        "(repeatable; default: the current folder)")
    parser.add_argument("--max-steps", type=int_in(1, 100_000), default=DEFAULTS.max_steps,
                        help=f"most sampling steps one request may ask for "
                        f"(default {DEFAULTS.max_steps})")
    parser.add_argument("--max-images", type=int_in(1, 10_000), default=DEFAULTS.max_images,
                        help=f"most images one request may ask for (default {DEFAULTS.max_images})")
    parser.add_argument("--max-upload-mb", type=float_in(0, 1024, low_open=True),
                        default=DEFAULTS.max_upload_mb,
                        help=f"largest file accepted (default {DEFAULTS.max_upload_mb:g} MB)")
    parser.add_argument("--concurrency", type=int_in(1, 64), default=DEFAULTS.concurrency,
                        help="requests that sample at once; the others wait in the queue "
                        f"(default {DEFAULTS.concurrency})")
    parser.add_argument("--queue-size", type=int_in(1, 10_000), default=DEFAULTS.queue_size,
                        help="requests that may wait; more are refused "
                        f"(default {DEFAULTS.queue_size})")
    parser.add_argument("--device", type=device_name,
                        help="cpu, cuda, cuda:1, mps (default: the first of those this machine "
                        "has)")
    parser.set_defaults(func=serve_main)


def check_port(host: str, port: int) -> None:
    """ValueError in one line when host:port cannot be listened on (another program holds
    it, or it needs privileges), before minutes go into loading models; gradio's own message
    would point at an environment variable and launch()'s parameters instead of --port."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as uvicorn binds: a port left in TIME_WAIT by a server just stopped is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror as e:
        raise ValueError(f"cannot serve on {host}:{port}: {e.strerror or e}; give a --host "
                         "this machine has (127.0.0.1 for this machine only)") from e
    except OSError as e:
        why = e.strerror or str(e)
        raise ValueError(f"cannot serve on {host}:{port}: {why}; give another --port "
                         f"(e.g. --port {port + 1 if port < 65535 else 8000}) or stop the "
                         "program that holds it") from e


def serve_main(args: argparse.Namespace) -> int:
    """Start the app as `args` say and serve until interrupted. A missing web extra or a bad
    --root is a ValueError / ImportError with one line (the CLI prints it)."""
    try:
        import gradio  # noqa: F401  (only to say what to install when it is missing)
    except ImportError as e:
        raise ImportError(f"difflab serve needs the web extra (gradio): {WEB_EXTRA}") from e

    check_port(args.host, args.port)
    roots = Roots(args.root or ["."])
    limits = Limits(
        max_steps=args.max_steps, max_images=args.max_images, max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency, queue_size=args.queue_size,
    )
    app = build_app(roots, limits, ModelStore(roots, device=args.device))
    print(f"difflab: serving checkpoints and runs from {roots}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"difflab: warning: --host {args.host} makes the app reachable from other "
              "machines, without a login", file=sys.stderr)
    work_root()  # made now, so that its removal at exit is in place before any request
    # `kill` (SIGTERM) stops the server as Ctrl-C does: an exit, so the requests' files go
    main_thread = threading.current_thread() is threading.main_thread()  # where signals go
    before = signal.signal(signal.SIGTERM, _exit_on_signal) if main_thread else None
    try:  # a launch that fails part-way must not leave its server holding the port
        url = launch(app, args.host, args.port, limits, block=False, quiet=True)
        print(f"difflab: the app is at {url} (Ctrl-C stops it)", flush=True)
        app.block_thread()
    finally:
        app.close()
        if main_thread:
            signal.signal(signal.SIGTERM, before)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the shell's status for a process the signal stopped


def main(argv: list[str] | None = None) -> int:
    """`python -m difflab.web.command`: the serve command on its own, until the CLI has it."""
    parser = argparse.ArgumentParser(prog="difflab serve", description=__doc__.split("\n")[0])
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve_main(args)
    except (ValueError, ImportError) as e:
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
