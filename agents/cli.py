"""The ``cascade`` command: one sub-command per job, user errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.allocator import keep_freed_memory
from agents.datasets import SAMPLE_TAR
from agents.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _cmd_train(args: argparse.Namespace) -> int:
    from agents.training.trainer import TrainConfig, default_val_path, train

    val = args.val if args.val is not None else default_val_path(args.data)
    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out or f"runs/train/{args.model}",
        val=val or None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        limit=args.limit,
        command=args.command_line,
    )
    path = train(cfg)
    print(f"checkpoint written: {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from agents.evaluation.report import run_eval

    return run_eval(args)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from agents.config import load_config

    cfg = load_config(args.file)
    print(f"{args.file}: ok (deployment {cfg.deployment!r}, {len(cfg.devices)} devices, tiers {sorted(cfg.tiers)})")
    return 0


def _agent(args: argparse.Namespace) -> int:
    from agents.config import load_config

    cfg = load_config(args.config)
    agent: Any
    if args.command == "device":
        from agents.device import DeviceAgent

        agent = DeviceAgent(cfg, args.id, frames=args.frames, clock_skew_ms=args.clock_skew_ms)
    elif args.command == "replay":
        from agents.replay import Replayer

        agent = Replayer(cfg, args.sensor, frames=args.frames)
    else:
        from agents.tier import TierAgent

        agent = TierAgent(cfg, args.tier or args.command, args.id, clock_skew_ms=args.clock_skew_ms)
    if args.command != "replay":
        _limit_cpu(agent, args)
    agent.install_signal_handlers()
    return int(agent.run())


def _cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import run_demo

    return run_demo(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from agents.sweep.command import run_sweep

    return run_sweep(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from agents.report import run_report

    return run_report(args)


def _cmd_acl(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.transport.acl import acl_file, parse_workers

    cfg = load_config(args.config)
    try:
        workers = parse_workers(args.workers or [], cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    text = acl_file(cfg, workers, args.monitor or ["monitor"])
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.out}: {text.count(chr(10) + 'user ')} accounts; point mosquitto's acl_file at it")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from agents.status import run_status

    return run_status(args)


def _cmd_link(args: argparse.Namespace) -> int:
    from agents.link.command import run_link

    return run_link(args)


def _cmd_profile(args: argparse.Namespace) -> int:
    from agents.profiling.command import run_profile

    return run_profile(args)


def _limit_cpu(agent: Any, args: argparse.Namespace) -> None:
    """The agent's CPU limits: its config section, each overridden by the command line; applied to this process."""
    from agents.cpulimit import CpuLimits, apply_limits, parse_cores

    section = agent.dcfg if args.command == "device" else agent.tcfg
    cores = parse_cores(args.cores) if args.cores else section.cpu.cores
    limits = CpuLimits(
        quota=args.cpu_quota if args.cpu_quota is not None else section.cpu.quota,
        cores=tuple(cores) if cores else None,
        threads=args.threads if args.threads is not None else section.threads,
    )
    apply_limits(limits, f"{args.command}-{args.id}")
    agent.cpu_limits = limits


def _agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clock-skew-ms",
        type=float,
        default=0.0,
        help="experiments: shift every wall-clock stamp this agent takes by MS, as if its clock were off",
    )
    p.add_argument(
        "--cpu-quota",
        type=float,
        help="hold this agent to Q cores' worth of CPU time (cgroup quota, e.g. 0.5; needs root or CPUQuota=)",
    )
    p.add_argument("--cores", help="pin this agent to these cores, e.g. 0 or 0,2-3")
    p.add_argument("--threads", type=int, help="torch threads (overrides the config)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="cascade", description="Device → edge → cloud inference over MQTT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo model (all exits jointly), calibrate it, write a checkpoint")
    p.add_argument("--model", required=True, help="zoo architecture, e.g. device-small")
    p.add_argument(
        "--data", required=True, help="training images: ImageFolder tar or folder, or a CIFAR-10 binary root"
    )
    p.add_argument("--val", help="calibration/validation images (default: val.tar beside --data; '' for none)")
    p.add_argument("--epochs", type=int, help="epochs (default: the model's recipe)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's recipe)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the model's recipe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--limit", type=int, help="train on a random subset of this many images")
    p.add_argument("--out", help="output directory (default runs/train/MODEL); rerun to resume")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("eval", help="per-exit accuracy and ECE, per-stage latency, the offline cascade curve")
    p.add_argument("--model", help="checkpoint: shipped name, directory or .json")
    p.add_argument("--data", default=str(SAMPLE_TAR), help="images: ImageFolder tar or folder (default: the sample)")
    p.add_argument("--limit", type=int, help="evaluate the first N images of a seeded shuffle")
    p.add_argument(
        "--cascade", help="two checkpoints 'FIRST,SECOND': the first's exits, then the second answers the rest"
    )
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="PNG of accuracy against early-exit fraction (default: beside --json)")
    p.add_argument("--threads", type=int, help="torch threads for the latency measurement (default: all cores)")
    p.add_argument("--no-latency", action="store_true", help="skip the per-stage latency measurement")
    p.add_argument("--split", action="store_true", help="bytes and accuracy of --model split at every point, per codec")
    p.add_argument("--codecs", help="with --split: comma-separated codecs (default: all, e.g. fp32,fp16,int8+zlib)")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("device", help="run a device agent")
    p.add_argument("--config", required=True, help="deployment YAML")
    p.add_argument("--id", required=True, help="device id (under 'devices')")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    _agent_options(p)
    p.set_defaults(handler=_agent)
    for tier in ("edge", "cloud"):
        p = sub.add_parser(tier, help=f"run an {tier} worker" if tier == "edge" else "run a cloud worker")
        p.add_argument("--config", required=True, help="deployment YAML")
        p.add_argument("--id", required=True, help="worker id (unique per process)")
        p.add_argument("--tier", help=f"tier name under 'tiers' (default {tier})")
        _agent_options(p)
        p.set_defaults(handler=_agent)
    p = sub.add_parser("replay", help="publish a source as a simulated sensor")
    p.add_argument("--config", required=True, help="deployment YAML")
    p.add_argument("--sensor", required=True, help="sensor id (under 'sensors')")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.set_defaults(handler=_agent)

    p = sub.add_parser("demo", help="broker, cloud, edge and device on this host; a summary at the end")
    p.add_argument("--frames", type=int, default=1000, help="frames the device processes (default 1000)")
    p.add_argument("--source", help="ImageFolder tar or folder (default: the committed sample)")
    p.add_argument("--config", help="base deployment YAML (default config/demo.yaml)")
    p.add_argument("--threshold", type=float, help="device exit threshold (overrides the config)")
    p.add_argument("--edge-threshold", type=float, help="edge threshold below which it forwards to the cloud")
    p.add_argument("--no-cloud", action="store_true", help="device and edge only; the edge answers at its final exit")
    p.add_argument("--split", type=int, help="split the device model at this point and send activations to the edge")
    p.add_argument("--codec", default="fp32", help="activation codec with --split (default fp32; e.g. int8+zlib)")
    p.add_argument("--run-dir", help="run directory (default runs/demo-<time>)")
    p.add_argument("--json", help="write the summary to this JSON file")
    p.add_argument("--influx-url", help="also send telemetry to this InfluxDB (v1 API), e.g. http://127.0.0.1:8086")
    p.add_argument("--influx-db", default="cascade", help="database for --influx-url, created if missing (cascade)")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("sweep", help="the real pipeline at every point of a grid of device settings; JSON, CSV, plots")
    p.add_argument("--grid", required=True, help="grid YAML: frames and the lists to sweep (docs/experiment.md)")
    p.add_argument("--json", required=True, help="results JSON; FILE.jsonl (per point, for --resume) and .csv beside")
    p.add_argument("--plots", help="directory for the PNG plots (none without it)")
    p.add_argument("--config", help="base deployment YAML (default config/demo.yaml)")
    p.add_argument("--frames", type=int, help="frames per point (overrides the grid's 'frames', default 500)")
    p.add_argument("--resume", action="store_true", help="skip the points FILE.jsonl already has measured ok")
    p.add_argument("--source", help="ImageFolder tar or folder (default: the config's source, else the sample)")
    p.add_argument("--run-dir", help="run directories of the points (default: beside --json, <stem>-runs)")
    p.add_argument("--point-timeout", type=float, default=600.0, help="seconds a point may run before it fails (600)")
    p.set_defaults(handler=_cmd_sweep)

    p = sub.add_parser("report", help="PNG plots and one self-contained HTML page from a run directory, no server")
    p.add_argument("--run", required=True, help="run directory (as written by the agents or cascade demo --run-dir)")
    p.add_argument("--out", help="output directory (default RUN/report)")
    p.add_argument("--json", help="also write the summary, per-device figures and file list to this JSON file")
    p.set_defaults(handler=_cmd_report)

    from agents.link.command import add_link_arguments  # stdlib only: cheap to import for every command

    p = sub.add_parser("link", help="a shaped TCP proxy in front of the broker: delay, jitter, loss, rate (no root)")
    add_link_arguments(p)
    p.set_defaults(handler=_cmd_link)

    from agents.profiling.options import add_arguments as add_profile_arguments  # stdlib only

    p = sub.add_parser("profile", help="per-stage latency profile of a model; --fit/--predict: per-layer predictor")
    add_profile_arguments(p)
    p.set_defaults(handler=_cmd_profile)

    p = sub.add_parser("check-config", help="validate a deployment YAML and exit (usable as ExecStartPre=)")
    p.add_argument("file", help="deployment YAML")
    p.set_defaults(handler=_cmd_check_config)

    p = sub.add_parser("acl", help="a mosquitto ACL file for a deployment: one block per account, no patterns")
    p.add_argument("--config", required=True, help="deployment YAML (devices, sensors, tiers)")
    p.add_argument(
        "--workers", action="append", help="TIER=ID[,ID...] worker accounts of a tier (default TIER-1); repeatable"
    )
    p.add_argument("--monitor", action="append", help="read-only account for cascade status (default monitor)")
    p.add_argument("-o", "--out", help="write here instead of standard output")
    p.set_defaults(handler=_cmd_acl)

    p = sub.add_parser("status", help="every agent of a deployment: availability and live counters, from the broker")
    p.add_argument("--config", required=True, help="deployment YAML (its broker and deployment name)")
    p.add_argument("--once", action="store_true", help="print one table after --wait seconds and exit")
    p.add_argument("--json", help="with --once: the rows as JSON to this file ('-': stdout)")
    p.add_argument(
        "--expect", help="with --once: comma-separated agent ids that must be online, else exit 1 (for checks)"
    )
    p.add_argument("--wait", type=float, default=3.0, help="seconds to connect, and with --once to listen (default 3)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between live refreshes (default 1)")
    p.add_argument("--stale", type=float, default=5.0, help="seconds without health before an agent shows as stale")
    p.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.command_line = shlex.join(["cascade", *raw])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    keep_freed_memory()  # before any tensor: activations reused, not page-faulted back in on every call
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cascade: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
