"""``bissl <command> --config FILE|NAME --out DIR [key=value ...]``: one entry point for every stage.

User errors end with one line on stderr and exit code 2 (``--debug`` shows the traceback); SIGTERM and
SIGINT finish the current step, write a checkpoint and exit with 143 / 130.

Two tables hold the commands: ``STAGES`` (commands that run a stage from a config into an ``--out`` folder) and
``TOOLS`` (commands that inspect or report). A new command is one entry in either.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bissl.errors import BisslError

TOP_LEVEL_KEYS = "seed, device, precision, the checkpoint paths"


@dataclass(frozen=True)
class Stage:
    """A command that runs ``module.function(config, run, stop=..., resume=...)`` into a run folder.

    ``sections`` are the config sections it reads (named in its --help; empty: every section); ``options`` adds
    its own flags and ``flag_keys`` maps those flags to the config keys they set (put in front of the
    key=value overrides)."""

    module: str
    function: str
    help: str
    sections: tuple[str, ...]
    needs_out: bool = True
    options: Callable[[argparse.ArgumentParser], None] | None = None
    flag_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    """A command with its own arguments that returns an exit code."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layout",
        metavar="{torchvision,timm,solo-learn,lightly,bissl-reference}",
        help="key layout of the checkpoint (imported.layout)",
    )
    parser.add_argument("--checkpoint", help="the checkpoint file (imported.checkpoint)")
    parser.add_argument("--head", help="bissl-reference: the separate head file (imported.head)")


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the parts still to run, with times estimated from the finished parts; run nothing",
    )


def _study_plan(args: argparse.Namespace) -> int:
    from bissl.config import load_config
    from bissl.study import plan_study

    print("\n".join(plan_study(load_config(args.config, args.overrides), Path(args.out))))
    return 0


STAGES: dict[str, Stage] = {
    "pretrain": Stage(
        "bissl.train.pretrain",
        "pretrain",
        "self-supervised pretraining (SimCLR or BYOL)",
        ("data", "model", "pretext", "augment", "pretrain", "logging"),
    ),
    "warmup": Stage(
        "bissl.train.warmup",
        "warmup",
        "train the downstream head on the frozen pretext backbone",
        ("data", "model", "pretext", "augment", "warmup", "bilevel", "logging"),
    ),
    "bilevel": Stage(
        "bissl.train.bilevel_stage",
        "train_bilevel",
        "the alternating BiSSL stage",
        ("data", "model", "pretext", "augment", "pretrain", "warmup", "bilevel", "logging"),
    ),
    "finetune": Stage(
        "bissl.train.finetune",
        "finetune",
        "fine-tune a backbone with a fresh linear head",
        ("data", "model", "augment", "finetune", "logging"),
    ),
    "search": Stage(
        "bissl.train.search",
        "search",
        "hyper-parameter search for fine-tuning, then seeds",
        ("data", "model", "augment", "finetune", "search", "logging"),
    ),
    "evaluate": Stage(
        "bissl.train.evaluate",
        "evaluate",
        "k-NN, linear probe and t-SNE of a frozen backbone",
        ("data", "model", "augment", "eval", "logging"),
    ),
    "compare": Stage(
        "bissl.experiment",
        "compare",
        "baseline against BiSSL over seeds, with a report",
        (),
    ),
    "study": Stage(
        "bissl.study",
        "study",
        "named arms x pipeline seeds from one pretext checkpoint, with paired statistics and a report",
        (),
        options=_add_study_options,
    ),
    "import": Stage(
        "bissl.train.import_checkpoint",
        "import_checkpoint",
        "turn a public SSL checkpoint (torchvision, timm, solo-learn, lightly, the authors') into a pretext checkpoint",
        ("imported", "model", "pretext"),
        options=_add_import_options,
        flag_keys={"layout": "imported.layout", "checkpoint": "imported.checkpoint", "head": "imported.head"},
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"bissl: error: {message} (see 'bissl --help')", file=sys.stderr)
        raise SystemExit(2)


def _sections_epilog(sections: tuple[str, ...]) -> str:
    """The --help footer of a stage: the config sections it reads and where to see their keys."""
    if not sections:
        reads = "every config section"
    else:
        reads = "config sections " + ", ".join(sections) + f" and the top-level keys ({TOP_LEVEL_KEYS})"
    return (
        f"Reads {reads}. Every key, its value and what it does: "
        "'bissl config show [--config X] [SECTION ...] [key=value ...]'; the shipped configs: 'bissl configs'."
    )


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="a shipped config by name (e.g. demo; 'bissl configs' lists them) or a YAML file; "
        "defaults apply without it",
    )


def _add_run_options(parser: argparse.ArgumentParser, needs_out: bool) -> None:
    _add_config_option(parser)
    parser.add_argument(
        "--out", required=needs_out, help="run folder: config.yaml, metrics.jsonl, checkpoints/, summary.json"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (automatic when it holds a checkpoint of the same config)",
    )
    parser.add_argument(
        "--force", action="store_true", help="reuse an --out folder that holds a run with a different config"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. pretext.temperature=0.2"
    )


# ---------------------------------------------------------------------------------------------------------
# Tools


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a folder written by 'bissl compare'")


def _report(args: argparse.Namespace) -> int:
    from bissl.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def _study_doc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a folder written by 'bissl study'")
    parser.add_argument("--out", default="docs/evidence.md", help="markdown file (default docs/evidence.md)")


def _study_doc(args: argparse.Namespace) -> int:
    from bissl.study_report import write_evidence

    print(write_evidence(Path(args.run_dir), Path(args.out)))
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["list"], help="'list': every dataset name, where it looks, whether it is present"
    )
    parser.add_argument("--root", default=None, help="data root to look in")


def _data(args: argparse.Namespace) -> int:
    print(describe_datasets(args.root))
    return 0


def _configs_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _configs(args: argparse.Namespace) -> int:
    print(describe_shipped_configs())
    return 0


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="show", required=True, parser_class=_Parser)
    show = actions.add_parser(
        "show",
        help="every resolved key, its value and what it does",
        description="Every key of the resolved config (defaults, then --config, then the overrides), its "
        "value and a one-line description.",
    )
    _add_config_option(show)
    show.add_argument(
        "items",
        nargs="*",
        metavar="SECTION|key=value",
        help="key=value overrides to resolve, and section or key names to show only those (e.g. bilevel)",
    )


def _config(args: argparse.Namespace) -> int:
    from bissl.config import describe_config, load_config

    overrides = [item for item in args.items if "=" in item]
    sections = [item for item in args.items if "=" not in item]
    print(describe_config(load_config(args.config, overrides), sections))
    return 0


def _curvature_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_option(parser)
    parser.add_argument("--out", default=None, help="also write the numbers to DIR/curvature.json")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. pretext_checkpoint=PATH"
    )


def _curvature(args: argparse.Namespace) -> int:
    from bissl.config import load_config
    from bissl.data.registry import keep_listings
    from bissl.train.curvature import curvature_command

    with keep_listings():  # the pretext and downstream sets share one listing of a folder
        print("\n".join(curvature_command(load_config(args.config, args.overrides), args.out)))
    return 0


CURVATURE_DESCRIPTION = (
    "On one Hessian batch of pretext_checkpoint=PATH, print one line each: the curvature used "
    "(bilevel.curvature), lambda_min and lambda_max of its Lanczos estimate (bilevel.diagnose_steps), "
    "the number of Ritz values below -(lam+delta), whether I + H/(lam+delta) is positive definite, "
    "and for the configured bilevel.solver the true relative residual ||v - A x||/||v|| and cos(x, v), "
    "where v is the downstream gradient of the head of head_checkpoint=PATH, or of a freshly "
    "initialised linear head, on one downstream batch. Writes nothing unless --out is given."
)

TOOLS: dict[str, Tool] = {
    "report": Tool("write report.html and results.json for a compare folder", _report_arguments, _report),
    "study-doc": Tool(
        "write docs/evidence.md (and its figure) from a study's results.json",
        _study_doc_arguments,
        _study_doc,
    ),
    "data": Tool("dataset utilities", _data_arguments, _data),
    "configs": Tool("list the shipped configs with their descriptions", _configs_arguments, _configs),
    "config": Tool(
        "'config show': every key of a resolved config with its value and description",
        _config_arguments,
        _config,
    ),
    "curvature": Tool(
        "is the implicit system of a pretext checkpoint well posed? one line per quantity",
        _curvature_arguments,
        _curvature,
        CURVATURE_DESCRIPTION,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bissl",
        description="BiSSL: bilevel optimisation between self-supervised pretraining and fine-tuning.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, stage in STAGES.items():
        command = sub.add_parser(
            name, help=stage.help, description=stage.help, epilog=_sections_epilog(stage.sections)
        )
        _add_run_options(command, stage.needs_out)
        if stage.options is not None:
            stage.options(command)
    demo = sub.add_parser(
        "demo",
        help="compare on embedded data (shipped config demo): SimCLR on Fashion-MNIST -> digits",
        description="'bissl compare' with the shipped config demo (--quick: demo-quick); runs from any folder",
        epilog=_sections_epilog(()),
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (config demo-quick)")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    demo.add_argument("--force", action="store_true", help="reuse an --out folder made with another config")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    for name, tool in TOOLS.items():
        tool.arguments(sub.add_parser(name, help=tool.help, description=tool.description or tool.help))
    return parser


def _run_stage(module: str, function: str, args: argparse.Namespace, config_path: str | None) -> int:
    from bissl import distributed
    from bissl.config import load_config
    from bissl.data.registry import keep_listings
    from bissl.runtime import GracefulStop, RunDir, close_tensorboard_logs

    config = load_config(config_path, args.overrides)
    device_type = "cuda" if config.device.startswith("cuda") else "cpu" if config.device == "cpu" else None
    distributed.init_from_env(device_type)
    out = Path(args.out)
    created = not out.exists()
    try:
        resume = args.resume or (out / "config.yaml").is_file()
        run = RunDir(out, config, resume=args.resume, force=args.force)
        stage: Callable[..., Any] = getattr(importlib.import_module(module), function)
        with GracefulStop() as stop, keep_listings():  # each dataset folder is listed once per run
            stage(config, run, stop=stop, resume=resume)
    except BisslError:
        if created and distributed.is_main():
            _remove_if_unused(out)
        raise
    finally:
        close_tensorboard_logs()
        distributed.shutdown()
    return 0


def _remove_if_unused(out: Path) -> None:
    """A folder this invocation created is removed after a user error if it holds nothing but its config and
    data splits (no checkpoint, metrics or summary: no work is lost)."""

    def setup_only(path: Path) -> bool:
        relative = path.relative_to(out)
        return relative == Path("config.yaml") or relative.parts[0] == "splits"

    if out.is_dir() and all(setup_only(p) for p in out.rglob("*") if p.is_file()):
        shutil.rmtree(out, ignore_errors=True)


def describe_datasets(root: str | None) -> str:
    """One line per registered dataset: name, present or not, where it is looked for."""
    from bissl.data.registry import DATASETS

    lines = []
    for name in sorted(DATASETS):
        info = DATASETS[name]
        state = "present" if info.is_present(root) else "missing"
        lines.append(f"{name:<16} {state:<8} {info.description}")
        lines.extend(f"{'':<25} looks in: {place}" for place in info.where(root))
    return "\n".join(lines)


def describe_shipped_configs() -> str:
    """One line per shipped config: its name (what --config takes) and its description."""
    from bissl.config import SHIPPED_CONFIGS, config_description, shipped_configs

    configs = shipped_configs()
    if not configs:
        return "no configs are shipped with this installation"
    width = max(len(name) for name in configs)
    lines = [f"{name:<{width}}  {config_description(path)}" for name, path in configs.items()]
    lines.append(f"(files in {SHIPPED_CONFIGS}; --config takes a name or the path of any YAML file)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["BISSL_QUIET"] = "1"
    if args.command is None:
        parser.print_help()
        return 2
    from bissl import distributed
    from bissl.runtime import StopRequested

    try:
        if args.command in TOOLS:
            return TOOLS[args.command].run(args)
        if args.command == "demo":
            return _run_stage("bissl.experiment", "compare", args, "demo-quick" if args.quick else "demo")
        stage = STAGES[args.command]
        flags = [
            f"{key}={getattr(args, flag)}" for flag, key in stage.flag_keys.items() if getattr(args, flag)
        ]
        args.overrides = [*flags, *args.overrides]
        if args.command == "study" and args.plan:
            return _study_plan(args)
        return _run_stage(stage.module, stage.function, args, args.config)
    except StopRequested as stop:
        if distributed.is_main():
            print(f"bissl: {stop}; checkpoint written, rerun the same command to resume", file=sys.stderr)
        return stop.exit_code
    except BisslError as error:
        if args.debug:
            traceback.print_exc()
        print(f"bissl: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("bissl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
