"""``cascade link``: run one shaped link (a TCP proxy) in front of the broker until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import math
import signal
import time
import types

from agents.errors import UserError
from agents.link.proxy import RTO_MIN_MS, SEGMENT_BYTES, LinkProxy, LinkShape, parse_hostport

DESCRIPTION = f"""\
A userspace TCP proxy emulating one network link, no root needed: agents connect
to --listen instead of the broker, the proxy forwards to --upstream and shapes
each direction on its own. Every chunk it reads is cut into {SEGMENT_BYTES}-byte
segments; each passes a token bucket (--rate; burst max(2 segments, 1 ms of
traffic)), takes size/rate to serialise, then waits --delay ± --jitter.
Bytes are never reordered. A TCP stream cannot lose bytes, so --loss is
emulated as TCP recovers from it: a 'lost' segment (and everything behind it)
is held one retransmission timeout longer, by default
2 × delay + max({RTO_MIN_MS:g} ms, 4 × jitter) (Linux: round trip + min RTO).
Counters are printed at exit (and every --stats seconds).
"""


def add_link_arguments(p: argparse.ArgumentParser) -> None:
    """The ``cascade link`` options."""
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address agents connect to (port 0: any)")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the broker the link leads to")
    p.add_argument("--delay", type=float, default=0.0, metavar="MS", help="one-way delay, each direction (0)")
    p.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="delay spread, never reordering (0)")
    p.add_argument(
        "--jitter-dist",
        choices=("uniform", "normal"),
        default="uniform",
        help="uniform: delay ± jitter; normal: standard deviation jitter (uniform)",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="P",
        help="probability per segment in [0, 1) of a loss; TCP delivers it anyway, one RTO later (0)",
    )
    p.add_argument(
        "--rto",
        type=float,
        metavar="MS",
        help=f"hold of a lost segment (default 2 × delay + max({RTO_MIN_MS:g}, 4 × jitter))",
    )
    p.add_argument("--rate", type=float, default=0.0, metavar="MBIT", help="rate per direction, 10^6 bit/s (0: none)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for jitter and loss (default: random)")
    p.add_argument("--stats", type=float, metavar="S", help="also print the counters every S seconds")


def run_link(args: argparse.Namespace) -> int:
    """Run the proxy in the foreground; SIGTERM or SIGINT stop it cleanly (exit 0) and print the counters."""
    listen = parse_hostport(args.listen, "--listen")
    upstream = parse_hostport(args.upstream, "--upstream")
    if upstream[1] == 0:
        raise UserError(f"--upstream {args.upstream!r}: port 0 is not a port one can connect to")
    if args.stats is not None and not (math.isfinite(args.stats) and args.stats > 0):
        raise UserError(f"--stats {args.stats}: must be a number of seconds > 0")
    shape = LinkShape(
        delay_ms=args.delay,
        jitter_ms=args.jitter,
        loss=args.loss,
        rate_mbit=args.rate,
        seed=args.seed,
        jitter_dist=args.jitter_dist,
        rto_ms=args.rto,
    )
    proxy = LinkProxy(upstream, shape, listen)
    stopping: list[int] = []

    def on_signal(sig: int, _frame: types.FrameType | None) -> None:
        stopping.append(sig)  # no locks in a signal handler: the loop below polls

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        proxy.start()
        print(f"cascade link: listening on {proxy.address} -> {proxy.upstream_text} ({shape.describe()})", flush=True)
        next_stats = time.monotonic() + args.stats if args.stats else math.inf
        while not stopping:
            time.sleep(0.05)
            if time.monotonic() >= next_stats:
                next_stats += args.stats
                print(f"cascade link: {proxy.stats().line()}", flush=True)
    finally:
        proxy.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"cascade link: stopped; {proxy.stats().line()}", flush=True)
    return 0
