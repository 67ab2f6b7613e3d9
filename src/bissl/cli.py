"""``bissl <command> --config FILE --out DIR [key=value ...]``: one entry point for every stage.

User errors end with one line on stderr and exit code 2 (``--debug`` shows the traceback); SIGTERM and
SIGINT finish the current step, write a checkpoint and exit with 143 / 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bissl.errors import BisslError

# command -> (module, function, needs --out, help)
COMMANDS: dict[str, tuple[str, str, bool, str]] = {
    "pretrain": ("bissl.train.pretrain", "pretrain", True, "self-supervised pretraining (SimCLR or BYOL)"),
    "warmup": (
        "bissl.train.warmup",
        "warmup",
        True,
        "train the downstream head on the frozen pretext backbone",
    ),
    "bilevel": ("bissl.train.bilevel_stage", "train_bilevel", True, "the alternating BiSSL stage"),
    "finetune": ("bissl.train.finetune", "finetune", True, "fine-tune a backbone with a fresh linear head"),
    "search": ("bissl.train.search", "search", True, "hyper-parameter search for fine-tuning, then seeds"),
    "evaluate": (
        "bissl.train.evaluate",
        "evaluate",
        True,
        "k-NN, linear probe and t-SNE of a frozen backbone",
    ),
    "compare": ("bissl.experiment", "compare", True, "baseline against BiSSL over seeds, with a report"),
    "study": (
        "bissl.study",
        "study",
        True,
        "named arms x pipeline seeds from one checkpoint, with statistics",
    ),
}
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"bissl: error: {message} (see 'bissl --help')", file=sys.stderr)
        raise SystemExit(2)


def _add_run_options(parser: argparse.ArgumentParser, needs_out: bool) -> None:
    parser.add_argument("--config", help="YAML experiment file (see configs/); defaults apply without it")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bissl",
        description="BiSSL: bilevel optimisation between self-supervised pretraining and fine-tuning.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, (_, _, needs_out, help_text) in COMMANDS.items():
        _add_run_options(sub.add_parser(name, help=help_text, description=help_text), needs_out)
    report = sub.add_parser("report", help="write report.html and results.json for a compare folder")
    report.add_argument("run_dir", help="a folder written by 'bissl compare'")
    doc = sub.add_parser(
        "study-doc", help="write docs/evidence.md (and its figure) from a study's results.json"
    )
    doc.add_argument("run_dir", help="a folder written by 'bissl study'")
    doc.add_argument("--out", default="docs/evidence.md", help="markdown file (default docs/evidence.md)")
    demo = sub.add_parser(
        "demo", help="compare on embedded data (configs/demo.yaml): SimCLR on Fashion-MNIST -> digits"
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    demo.add_argument("--force", action="store_true", help="reuse an --out folder made with another config")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    data = sub.add_parser("data", help="dataset utilities")
    data.add_argument(
        "action", choices=["list"], help="'list': every dataset name, where it looks, whether it is present"
    )
    data.add_argument("--root", default=None, help="data root to look in")
    return parser


def _demo_config(quick: bool) -> str:
    name = "demo-quick.yaml" if quick else "demo.yaml"
    for folder in (Path.cwd() / "configs", REPO_CONFIGS):
        if (folder / name).is_file():
            return str(folder / name)
    raise BisslError(f"configs/{name} not found; run 'bissl demo' from the repository root")


def _run_stage(module: str, function: str, args: argparse.Namespace, config_path: str | None) -> int:
    from bissl import distributed
    from bissl.config import load_config
    from bissl.runtime import GracefulStop, RunDir

    config = load_config(config_path, args.overrides)
    device_type = "cuda" if config.device.startswith("cuda") else "cpu" if config.device == "cpu" else None
    distributed.init_from_env(device_type)
    out = Path(args.out)
    created = not out.exists()
    try:
        resume = args.resume or (out / "config.yaml").is_file()
        run = RunDir(out, config, resume=args.resume, force=args.force)
        stage: Callable[..., Any] = getattr(importlib.import_module(module), function)
        with GracefulStop() as stop:
            stage(config, run, stop=stop, resume=resume)
    except BisslError:
        if created and distributed.is_main():
            _remove_if_unused(out)
        raise
    finally:
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
    from bissl.data.datasets import DATASETS

    lines = []
    for name in sorted(DATASETS):
        info = DATASETS[name]
        state = "present" if info.is_present(root) else "missing"
        lines.append(f"{name:<16} {state:<8} {info.description}")
        lines.extend(f"{'':<25} looks in: {place}" for place in info.where(root))
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
        if args.command == "report":
            from bissl.report import write_report

            print(write_report(Path(args.run_dir)))
            return 0
        if args.command == "study-doc":
            from bissl.study_report import write_evidence

            print(write_evidence(Path(args.run_dir), Path(args.out)))
            return 0
        if args.command == "data":
            print(describe_datasets(args.root))
            return 0
        if args.command == "demo":
            return _run_stage("bissl.experiment", "compare", args, _demo_config(args.quick))
        module, function, _, _ = COMMANDS[args.command]
        return _run_stage(module, function, args, args.config)
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
