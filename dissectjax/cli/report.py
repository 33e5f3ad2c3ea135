"""``dissectjax report`` and ``dissectjax serve``: see a dissection, and ask it questions."""

from __future__ import annotations

import sys

from dissectjax.app.server import LOOPBACK
from dissectjax.cli.common import positive, positive_int
from dissectjax.errors import DissectError


def cmd_report(args) -> int:
    from dissectjax.report import write_report

    path = write_report(args.directory, args.out)
    print(path)
    return 0


def cmd_serve(args) -> int:
    from dissectjax.app import open_service, serve
    from dissectjax.app.server import allowed_host, is_loopback

    positive(args.images, "--images")
    if not 0 <= args.port <= 65535:
        raise DissectError(f"--port must be between 0 and 65535, got {args.port}")
    for name in args.allow_host:
        allowed_host(name)  # checked before anything is loaded
    service = open_service(args.directory, args.checkpoint, args.stats, args.images, with_model=not args.no_model,
                           data=args.data, data_dir=args.data_dir)  # fmt: skip
    if not is_loopback(args.host):  # after loading: bad input ends in its one line alone
        print(f"warning: serving on {args.host}: the app has no authentication; anyone who can reach this address "
              "can use it and run the model", file=sys.stderr)  # fmt: skip

    def ready(server):
        print(f"dissectjax app on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    serve(service, args.host, args.port, ready, extra_hosts=args.allow_host)
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
    s.add_argument(
        "--images", type=positive_int, default=1000, help="held-out images for ablation (default: %(default)s)"
    )
    s.add_argument("--data", default="synthetic",
                   help="labelled images for live ablation: synthetic (default), digits, a class-folder directory "
                        "DIR/<class>/*.jpg, or tfds:NAME[:SPLIT] (as for dissectjax ablate)")  # fmt: skip
    s.add_argument("--data-dir", help="where prepared TFDS datasets are (for --data tfds:...)")
    s.add_argument("--host", default=LOOPBACK, help="address to bind (default: %(default)s, this machine only)")
    s.add_argument("--port", type=int, default=8050, help="port (default: %(default)s; 0 picks a free one)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="also answer requests that name this host (repeatable): a name that reaches the app, or an "
                        "SSH tunnel's local end, e.g. localhost:9000 (default: only the bound address, and "
                        "localhost on a loopback bind)")  # fmt: skip
    s.set_defaults(func=cmd_serve)
