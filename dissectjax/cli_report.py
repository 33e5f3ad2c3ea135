"""``dissectjax report`` and ``dissectjax serve``: see a dissection, and ask it questions."""

from __future__ import annotations

import ipaddress
import os
import sys

from dissectjax.errors import DissectError

LOOPBACK = "127.0.0.1"


def cmd_report(args) -> int:
    from dissectjax.report import write_report

    path = write_report(args.directory, args.out)
    print(path)
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(args):
    """The app's service for ``serve``'s arguments (the checkpoint defaults to the dissection's own)."""
    from dissectjax.app import AppService, scene_classifier
    from dissectjax.report import Dissection

    if args.images < 1:
        raise DissectError(f"--images must be a positive integer, got {args.images}")
    dissection = Dissection.load(args.directory)
    checkpoint = args.checkpoint or dissection.summary.get("checkpoint")
    classifier = None
    if checkpoint and not args.no_model:
        if not os.path.isdir(checkpoint):
            raise DissectError(f"checkpoint {checkpoint} does not exist; pass --checkpoint PATH or --no-model")
        classifier = scene_classifier(checkpoint, args.images)
    stats = None
    if args.stats:
        from dissectjax.specialize import ClassUnitStats

        if not os.path.isfile(args.stats):
            raise DissectError(f"--stats {args.stats} does not exist (write it with `dissectjax specialize`)")
        stats = ClassUnitStats.load(args.stats)
    return AppService(dissection, classifier, stats)


def cmd_serve(args) -> int:
    from dissectjax.app import serve

    if not 0 <= args.port <= 65535:
        raise DissectError(f"--port must be between 0 and 65535, got {args.port}")
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}: the app has no authentication; anyone who can reach this address "
              "can use it and run the model", file=sys.stderr)  # fmt: skip
    service = build_service(args)

    def ready(server):
        host, port = server.server_address[:2]
        print(f"dissectjax app on http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)

    serve(service, args.host, args.port, ready)
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a dissection output directory")
    r.add_argument("directory", help="a dissection output directory (dissectjax dissect --out DIR)")
    r.add_argument("--out", help="report file (default: DIR/report.html)")
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("serve", help="a local web app to ask a dissection questions and ablate units live")
    s.add_argument("directory", help="a dissection output directory")
    s.add_argument("--checkpoint", help="the classifier to ablate live (default: the dissection's checkpoint)")
    s.add_argument("--no-model", action="store_true", help="browse the results only; no live ablation")
    s.add_argument("--stats", help="per-class unit statistics (stats.npz from `dissectjax specialize`)")
    s.add_argument("--images", type=int, default=1000, help="held-out images for ablation (default: %(default)s)")
    s.add_argument("--host", default=LOOPBACK, help="address to bind (default: %(default)s, this machine only)")
    s.add_argument("--port", type=int, default=8050, help="port (default: %(default)s; 0 picks a free one)")
    s.set_defaults(func=cmd_serve)
