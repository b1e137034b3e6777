"""``serve`` (an offline web page and REST API over one model) and ``models`` (the models
there are and the input each takes)."""

from __future__ import annotations

import argparse
import json
import sys

from globeflow.cli.common import CLIError, positive_int

__all__ = ["CHECKS", "COMMANDS", "PARSERS"]


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an offline web page and REST API (POST /v1/locate) over one model")
    p.add_argument(
        "--model", default=None, help="run directory, PLONK checkpoint directory or hf:ORG/NAME (default: shipped)"
    )
    p.add_argument("--encoder", default=None, help="encoder of the texts/photos (default: the model's)")
    p.add_argument("--encoder-path", default=None, help="hub id or local directory of the encoder's weights")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--samples", type=positive_int, default=256, help="samples per answer (default 256)")
    p.add_argument("--density-steps", type=positive_int, default=8, help="RK4 steps of the likelihood ODE (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo accepted, in MB (default 10)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="most inputs per request (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped, local and cached hub models and what input each takes")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search for run directories (default: .)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def cmd_serve(args: argparse.Namespace) -> int:
    from globeflow.serve import Limits, Locator, serve

    if args.max_upload_mb <= 0:
        raise CLIError("--max-upload-mb must be positive")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_batch=args.max_batch)
    print("loading the model…", file=sys.stderr)
    locator = Locator(
        args.model,
        encoder=args.encoder,
        encoder_path=args.encoder_path,
        device=args.device,
        num_samples=args.samples,
        density_steps=args.density_steps,
        limits=limits,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: --host {args.host} makes the server reachable from other machines; it has no authentication",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"globeflow serve: {locator.name} ({locator.input_kind or 'embedding'} input) on http://{host}:{args.port}/ "
        f"(API docs: /docs; Ctrl-C to stop)",
        file=sys.stderr,
    )
    serve(locator, host=args.host, port=args.port)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from globeflow.models import format_models, list_models

    infos = list_models(args.dirs or None)
    if args.json:
        sys.stdout.write("".join(json.dumps(m.to_dict()) + "\n" for m in infos))
    else:
        print(format_models(infos))
    return 0


PARSERS = {"serve": add_serve, "models": add_models}
CHECKS: dict = {}
COMMANDS = {"serve": cmd_serve, "models": cmd_models}
