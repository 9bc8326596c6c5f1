"""``kuosan serve``: a local web page to generate, edit and compare images (needs ``pip install 'kuosan[serve]'``)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from kuosan.errors import KuosanError

EXAMPLES = """examples:
  kuosan serve --checkpoint runs/fm                      then open http://127.0.0.1:7860
  kuosan serve --checkpoint runs/fm --runs runs/ --out gallery/       every run under runs/ on the page too
  kuosan serve --checkpoint runs/fm --port 8000 --device cpu --queue 8

The page works offline: it loads nothing from the internet and sends nothing anywhere. Every image it
makes is kept under --out with its parameters (also inside each PNG: drop one on the page to fill the form).
It has no login: keep --host at 127.0.0.1 unless everyone who can reach the port may use it.
"""

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to generate, edit and compare images", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the model the page opens with: a run, checkpoint or "
                                                       "diffusers directory")
    p.add_argument("--runs", default=None, help="a folder of runs to offer too (students of `kuosan distill` "
                                                "included), found by scanning it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--out", default="gallery", help="where every image made is kept (default ./gallery)")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait per model (default 16)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda, cuda:N")
    p.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    from kuosan.validation import whole

    whole(args.port, "--port", 1, 65535)
    whole(args.queue, "--queue", 1, 1024)
    try:  # the optional web extra
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise KuosanError("kuosan serve needs the web extra: pip install 'kuosan[serve]' (starlette and uvicorn)") \
            from None
    from kuosan.serve.app import create_app
    from kuosan.serve.service import ServeConfig, Service

    service = Service(ServeConfig(checkpoint=args.checkpoint, runs=args.runs, out=args.out, device=args.device,
                                  queue=args.queue))
    hosts = None
    if is_loopback(args.host):
        hosts = [*_LOOPBACK_NAMES, args.host.strip("[]")]
    else:
        print(f"kuosan: warning: the page has no login: anyone who can reach {args.host}:{args.port} can use it, "
              "its models and its gallery", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"kuosan serve: {service.models.default.name} and {len(service.models.entries()) - 1} other model(s); "
          f"gallery in {args.out}; open http://{shown}:{args.port}", flush=True)
    try:
        uvicorn.run(create_app(service, hosts), host=args.host, port=args.port, log_level="warning",
                    server_header=False, timeout_graceful_shutdown=3)  # Ctrl-C: open streams get 3 s
    finally:
        service.close()
    return 0
