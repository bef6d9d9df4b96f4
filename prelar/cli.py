"""The `prelar` command. DVC stages call these subcommands; so can a user, on their own data.

Parameters come from `params.yaml` in the working folder (or `--params FILE`; outside a repository, the
built-in defaults of `prelar.config`), its `--profile`, then `--set KEY=VALUE` (any subcommand, repeatable;
VALUE is YAML, e.g. `--set data.metaworld.tasks=[reach-v3]`). A few flags are shorthands for parameters
(the section is named in their help); `--set` wins over them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

PARAMS = "params.yaml"

# Subcommands implemented in their own modules: each module defines
#   add_arguments(parser: argparse.ArgumentParser) -> None  and  run(params: config.Params, args) -> int,
# and, if some of its flags stand for parameters, updates(params, args) -> dict[str, Any] (typed updates,
# e.g. {"pretrain.steps": 2}, applied with `--set`). Modules are imported lazily, so that `prelar ingest`
# does not pay for torch. The parameter options (--params, --profile, --set) are added here, to every
# subcommand.
COMMANDS = {
    "pretrain": ("prelar.pretrain", "pre-train the world model on video shards (model, loader, pretrain)"),
    "finetune": ("prelar.agent.finetune", "fine-tune + behaviour learning on a Meta-world task (finetune)"),
    "evaluate": ("prelar.evaluate.stages", "evaluation stages: probe, controllability, transfer (evaluate)"),
    "report": ("prelar.evaluate.report", "aggregate MLflow runs into the HTML report (report)"),
    "study": ("prelar.study", "pre-training study: learning curves of several variants and seeds (study)"),
    "online": ("prelar.online", "online RL study: success curves of several methods and seeds (online)"),
}
# `prelar ingest <source>`: the flags that stand for parameters of `data.<source>`.
INGEST_FLAGS = {
    "metaworld": {},
    "rlbench": {"src": "folder holding the RLBench task folders"},
    "ssv2": {
        "src": "folder holding the <id>.webm files",
        "labels": "labels JSON (train.json / validation.json); optional",
    },
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` → (KEY, VALUE parsed as YAML): the one place where a `--set` value is parsed."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. model.deter=1024")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not valid YAML ({problem})") from None


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    """--params, --profile and --set on `parser`'s leaf subcommands (those that run something)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands:
        for child in action.choices.values():
            _add_parameter_options(child)
    if subcommands:
        return
    parser.add_argument(
        "--params", default=None, help=f"parameter file (default: ./{PARAMS}, else the built-in defaults)"
    )
    parser.add_argument("--profile", default=None, help="profile (default: the file's `profile:`)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set finetune.batch_size=16 (repeatable; VALUE is YAML)",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its options (the others stay unloaded)."""
    parser = argparse.ArgumentParser(prog="prelar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="transcode a video source into 64x64 WebDataset shards")
    isub = ingest.add_subparsers(dest="source", required=True)
    helps = {
        "metaworld": "render Meta-world scripted-policy episodes (data.metaworld)",
        "rlbench": "RLBench renders: ROOT/<task>/variation<N>/... (data.rlbench)",
        "ssv2": "Something-Something-V2 .webm clips (data.ssv2)",
    }
    for source, flags in INGEST_FLAGS.items():
        p = isub.add_parser(source, help=helps[source])
        for name, help_text in flags.items():
            p.add_argument(f"--{name}", default=None, help=f"{help_text} (data.{source}.{name})")
        p.add_argument("--out", default=None, help=f"output shard folder (data.{source}.out)")
        p.add_argument("--metrics", default=None, help="also write the summary metrics JSON here (for DVC)")
        if source == "metaworld":
            p.add_argument(
                "--study",
                action="store_true",
                help="the pre-training study's shards: data.metaworld with the values of study.data",
            )
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    _add_parameter_options(parser)
    return parser


def load_params(path: str | None, profile: str | None):
    """`path`, else ./params.yaml, else (said in one line on stderr) the built-in defaults."""
    from prelar import config

    if path is None and not Path(PARAMS).exists():
        note = f"prelar: no {PARAMS} in {Path.cwd()}; using the built-in defaults (prelar.config)"
        print(note, file=sys.stderr)
        return config.resolve({}, profile=profile, source="built-in defaults")
    return config.load(path or PARAMS, profile=profile)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    from prelar import config

    try:
        params = load_params(args.params, args.profile)
        if args.command == "ingest":
            from prelar.data.ingest import ingest_from_cli as run

            flags = {
                f"data.{args.source}.{name}": getattr(args, name)
                for name in [*INGEST_FLAGS[args.source], "out"]
                if getattr(args, name) is not None
            }
            if getattr(args, "study", False) and args.out is not None:  # --out: the study's folder
                flags = {"study.data.out": flags.pop(f"data.{args.source}.out")}
        else:
            module = importlib.import_module(args._module)
            run = module.run
            flags = module.updates(params, args) if hasattr(module, "updates") else {}
        params = config.override(params, {**flags, **dict(args.set)})
        return run(params, args)
    except (config.ConfigError, FileNotFoundError) as err:
        print(f"prelar: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
