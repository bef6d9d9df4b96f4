"""The `prelar` command. DVC stages call these subcommands; so can a user, on their own data.

Every option defaults to `params.yaml` (section named in its help); `--profile` picks a profile.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--profile", default=None, help="profile of the parameter file (default: its `profile`)")


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """`--set KEY=VALUE` (repeatable): override any parameter; applied with `config.override`."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a parameter, e.g. --set {example} (repeatable; VALUE is YAML)",
    )


# Subcommands implemented in their own modules: each module defines
#   add_arguments(parser: argparse.ArgumentParser) -> None  and  run(params: config.Params, args) -> int
# (imported lazily, so that `prelar ingest` does not pay for torch).
COMMANDS = {
    "pretrain": ("prelar.pretrain", "pre-train the world model on video shards (model, loader, pretrain)"),
    "finetune": ("prelar.agent.finetune", "fine-tune + behaviour learning on a Meta-world task (finetune)"),
    "evaluate": ("prelar.evaluate.stages", "evaluation stages: probe, controllability, transfer (evaluate)"),
    "report": ("prelar.evaluate.report", "aggregate MLflow runs into the HTML report (report)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its options (the others stay unloaded)."""
    parser = argparse.ArgumentParser(prog="prelar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="transcode a video source into 64x64 WebDataset shards")
    isub = ingest.add_subparsers(dest="source", required=True)
    mw = isub.add_parser("metaworld", help="render Meta-world scripted-policy episodes (data.metaworld)")
    mw.add_argument("--tasks", nargs="+", default=None, help="Meta-world v3 task names (default: params)")
    mw.add_argument("--episodes-per-task", type=int, default=None)
    mw.add_argument("--max-steps", type=int, default=None)
    mw.add_argument("--cameras", nargs="+", default=None)
    mw.add_argument("--action-noise", type=float, default=None)
    mw.add_argument("--seed", type=int, default=None)
    rl = isub.add_parser("rlbench", help="RLBench renders: ROOT/<task>/variation<N>/... (data.rlbench)")
    rl.add_argument("--src", default=None, help="folder holding the RLBench task folders")
    rl.add_argument("--cameras", nargs="+", default=None)
    rl.add_argument("--resize", choices=["squash", "center_crop"], default=None)
    ss = isub.add_parser("ssv2", help="Something-Something-V2 .webm clips (data.ssv2)")
    ss.add_argument("--src", default=None, help="folder holding the <id>.webm files")
    ss.add_argument("--labels", default=None, help="labels JSON (train.json / validation.json); optional")
    ss.add_argument("--frame-stride", type=int, default=None)
    ss.add_argument("--max-clips", type=int, default=None)
    ss.add_argument("--resize", choices=["squash", "center_crop"], default=None)
    for p in (mw, rl, ss):
        _common(p)
        p.add_argument("--out", default=None, help="output shard folder (default: params)")
        p.add_argument("--workers", type=int, default=None, help="decode processes (data.shards.workers)")
        p.add_argument("--metrics", default=None, help="also write the summary metrics JSON here (for DVC)")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _common(p)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    from prelar import config

    try:
        params = config.load(args.params, profile=args.profile)
        if args.command == "ingest":
            from prelar.data.ingest import ingest_from_cli

            return ingest_from_cli(params, args)
        return importlib.import_module(args._module).run(params, args)
    except (config.ConfigError, FileNotFoundError) as err:
        print(f"prelar: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
