"""``bissl <command> --config FILE|NAME --out DIR [key=value ...]``: one entry point for every stage.

User errors end with one line on stderr and exit code 2 (``--debug`` shows the traceback); SIGTERM and
SIGINT finish the current step, write a checkpoint and exit with 143 / 130; Ctrl-C before the loop runs ends
with one line and 130. A command that fails before doing any work leaves its --out folder as it found it.

Two tables hold the commands: ``STAGES`` (commands that run a stage from a config into an ``--out`` folder) and
``TOOLS`` (commands that inspect or report). A new command is one entry in either.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bissl.errors import BisslError, NonFiniteError

TOP_LEVEL_KEYS = "seed, device, precision, the checkpoint paths"


@dataclass(frozen=True)
class Stage:
    """A command that runs ``module.function(config, run, stop=..., resume=...)`` into a run folder.

    ``sections`` are the config sections it reads (named in its --help; empty: every section); ``options`` adds
    its own flags and ``flag_keys`` maps those flags to the config keys they set (their values are taken
    literally, never parsed as YAML; a key=value override of the same key wins). ``check`` names a
    ``module.check(config, out)`` run before anything is written into --out; ``description`` is the longer
    text of its own --help (else ``help``)."""

    module: str
    function: str
    help: str
    sections: tuple[str, ...]
    needs_out: bool = True
    options: Callable[[argparse.ArgumentParser], None] | None = None
    flag_keys: dict[str, str] = field(default_factory=dict)
    check: str | None = None
    description: str | None = None


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
        metavar="{torchvision,timm,solo-learn,lightly,dino,bissl-reference}",
        help="key layout of the checkpoint (imported.layout)",
    )
    parser.add_argument("--checkpoint", help="the checkpoint file (imported.checkpoint)")
    parser.add_argument("--head", help="bissl-reference: the separate head file (imported.head)")
    parser.add_argument(
        "--method",
        metavar="{simclr,byol,vicreg,barlow_twins,mocov3,dino}",
        help="the method that trained the checkpoint, where the file does not say (imported.method; it must "
        "be pretext.method)",
    )


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the parts still to run, with times estimated from the finished parts; run nothing",
    )


def _study_plan(args: argparse.Namespace, literal: dict[str, str]) -> int:
    """``bissl study --plan``: print what remains to run; nothing is run or written."""
    from bissl.config import load_config
    from bissl.study import plan_study

    config = _with_literal_values(load_config(args.config, args.overrides), literal, args.overrides)
    print("\n".join(plan_study(config, Path(args.out))))
    return 0


STAGES: dict[str, Stage] = {
    "pretrain": Stage(
        "bissl.train.pretrain",
        "pretrain",
        "self-supervised pretraining (SimCLR, BYOL, VICReg, Barlow Twins, MoCo v3)",
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
        check="check_compare",
    ),
    "study": Stage(
        "bissl.study",
        "study",
        "named arms x pipeline seeds from one pretext checkpoint, with paired statistics and a report",
        (),
        options=_add_study_options,
        check="check_study",
    ),
    "import": Stage(
        "bissl.train.import_checkpoint",
        "import_checkpoint",
        "turn a public SSL checkpoint (torchvision, timm, solo-learn, lightly, DINO, the authors') into a pretext checkpoint",
        ("imported", "model", "pretext"),
        description="turn a public SSL checkpoint (torchvision, timm, solo-learn, lightly, DINO, the authors') "
        "into a pretext checkpoint: the backbone (a ResNet or a ViT), with the projector, the predictor and the "
        "momentum encoder (BYOL, MoCo v3: the target network) where the file holds them; classifiers are "
        "dropped, and a checkpoint of another method than pretext.method is refused (docs/import.md)",
        options=_add_import_options,
        flag_keys={
            "layout": "imported.layout",
            "checkpoint": "imported.checkpoint",
            "head": "imported.head",
            "method": "imported.method",
        },
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
        help="continue the run in --out, also under a changed config (automatic when it holds a checkpoint of "
        "the same config)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reuse an --out folder that holds a run with a different config, or files of no bissl run",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. pretext.temperature=0.2"
    )


# ---------------------------------------------------------------------------------------------------------
# Tools


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", help="a folder written by 'bissl compare' (its results.json is read, not changed)"
    )


def _report(args: argparse.Namespace) -> int:
    from bissl.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def _study_doc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a folder written by 'bissl study'")
    parser.add_argument("--out", default="docs/evidence.md", help="markdown file (default docs/evidence.md)")


def _study_doc(args: argparse.Namespace) -> int:
    from bissl.report.evidence import write_evidence

    print(write_evidence(Path(args.run_dir), Path(args.out)))
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["list"], help="'list': every dataset name, where it looks, whether it is present"
    )
    parser.add_argument("--root", default=None, help="data root to look in")


def _data(args: argparse.Namespace) -> int:
    from bissl.data.registry import describe_datasets

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
    "report": Tool(
        "rebuild report.html of a compare folder from its results.json", _report_arguments, _report
    ),
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
            name,
            help=stage.help,
            description=stage.description or stage.help,
            epilog=_sections_epilog(stage.sections),
        )
        _add_run_options(command, stage.needs_out)
        if stage.options is not None:
            stage.options(command)
    demo = sub.add_parser(
        "demo",
        help="compare on embedded data (shipped config demo): SimCLR on Fashion-MNIST -> digits",
        description="'bissl compare' with the shipped config demo (--quick: demo-quick; --vit: demo-vit, "
        "DINO and a tiny ViT; both: demo-vit-quick); runs from any folder",
        epilog=_sections_epilog(()),
    )
    demo.add_argument("--out", help="run folder (default runs/demo, with --vit runs/demo-vit)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (config demo-quick)")
    demo.add_argument(
        "--vit", action="store_true", help="DINO and a tiny ViT trained with AdamW (config demo-vit)"
    )
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    demo.add_argument("--force", action="store_true", help="reuse an --out folder made with another config")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    for name, tool in TOOLS.items():
        tool.arguments(sub.add_parser(name, help=tool.help, description=tool.description or tool.help))
    return parser


def _run_stage(
    stage: Stage, args: argparse.Namespace, config_path: str | None, literal: dict[str, str]
) -> int:
    from bissl import distributed
    from bissl.config import load_config
    from bissl.data.registry import keep_listings
    from bissl.runtime import GracefulStop, RunDir, close_tensorboard_logs, files_under

    config = _with_literal_values(load_config(config_path, args.overrides), literal, args.overrides)
    out = _checked_out(args.out, resume=args.resume, force=args.force)
    device_type = "cuda" if config.device.startswith("cuda") else "cpu" if config.device == "cpu" else None
    distributed.init_from_env(device_type)
    created = _first_missing(out)
    before = files_under(out) if distributed.is_main() else {}
    folders = _folders_under(out) if distributed.is_main() else set()
    configs = _config_texts(out, before)
    try:
        with keep_listings():  # each dataset folder is listed once per run, checks included
            module = importlib.import_module(stage.module)
            if stage.check is not None:
                getattr(module, stage.check)(config, out)
            resume = args.resume or (out / "config.yaml").is_file()
            run = RunDir(out, config, resume=args.resume, force=args.force)
            function: Callable[..., Any] = getattr(module, stage.function)
            with GracefulStop() as stop:
                function(config, run, stop=stop, resume=resume)
    except BaseException as error:
        kept = _checkpoint_note(out, before) if isinstance(error, NonFiniteError) else None
        if distributed.is_main():
            _undo_setup(out, before, folders, configs, created)
        if kept is not None:
            raise NonFiniteError(f"{error}; {kept}") from None
        raise
    finally:
        close_tensorboard_logs()
        distributed.shutdown()
    return 0


def _with_literal_values(config: Any, values: dict[str, str], overrides: list[str]) -> Any:
    """``config`` with the literal string ``values`` of command-line flags set (a key=value override of the
    same key wins, as it comes later on the command line)."""
    from bissl.config import config_from_dict, to_dict

    overridden = {item.split("=", 1)[0].strip() for item in overrides if "=" in item}
    values = {key: value for key, value in values.items() if key not in overridden}
    if not values:
        return config
    data = to_dict(config)
    for key, value in values.items():
        *sections, last = key.split(".")
        node = data
        for part in sections:
            node = node[part]
        node[last] = value
    return config_from_dict(data)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def _name_max(path: Path) -> int:
    """The longest file name (in bytes) the file system of ``path`` (or its nearest existing folder) allows."""
    for folder in (path.absolute(), *path.absolute().parents):
        try:
            return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return 255


def _checked_out(text: str | None, *, resume: bool, force: bool) -> Path:
    """The --out folder, refused in one line when it cannot hold this run: empty, a name too long, a file,
    --resume of a folder without a run, or a non-empty folder of no bissl run (without --force)."""
    if text is None or not text.strip():
        raise BisslError("--out is empty; name the folder the run writes to, e.g. --out runs/first")
    out = Path(text)
    limit = _name_max(out)
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise BisslError(
                f"--out '{_short(text)}' has a name longer than the {limit} bytes a file name may have here; "
                "choose a shorter --out"
            )
    try:
        exists = out.exists()
        if exists and not out.is_dir():
            raise BisslError(f"--out '{text}' is a file, not a folder; choose another --out")
        has_run = (out / "config.yaml").is_file()
        foreign = exists and any(not entry.name.startswith(".") for entry in out.iterdir())
    except OSError as exc:
        raise BisslError(
            f"--out '{_short(text)}' cannot be used ({exc.strerror}); choose another --out"
        ) from None
    if resume and not exists:
        raise BisslError(
            f"--resume: output folder '{text}' does not exist, so there is no run to resume; check --out, or "
            "drop --resume to start a new run"
        )
    if resume and not has_run:
        raise BisslError(
            f"--resume: output folder '{text}' holds no bissl run (no config.yaml); check --out, or drop "
            "--resume to start a new run"
        )
    if foreign and not has_run and not force:
        raise BisslError(
            f"output folder '{text}' is not empty and holds no bissl run (no config.yaml); choose another "
            "--out, or pass --force to write into it"
        )
    return out


def _config_texts(out: Path, state: dict[Path, tuple[int, int]]) -> dict[Path, str]:
    """The text of every config.yaml under ``out`` (to restore them after a command that did no work)."""
    texts = {}
    for relative in state:
        if relative.name == "config.yaml":
            try:
                texts[relative] = (out / relative).read_text()
            except (OSError, UnicodeDecodeError):
                continue
    return texts


def _first_missing(out: Path) -> Path | None:
    """The outermost folder of ``out`` (``out`` itself or a parent) that does not exist yet: what creating
    ``out`` adds; None when ``out`` exists."""
    missing = None
    for folder in (out, *out.parents):
        if folder.exists() or folder == Path(folder.anchor or "."):
            break
        missing = folder
    return missing


def _folders_under(out: Path) -> set[Path]:
    return {p for p in out.rglob("*") if p.is_dir()} if out.is_dir() else set()


def _undo_setup(
    out: Path,
    before: dict[Path, tuple[int, int]],
    folders: set[Path],
    configs: dict[Path, str],
    created: Path | None,
) -> None:
    """After a failed or interrupted command that did no work (no checkpoint, metrics, summary or result
    written or changed), put --out back as it was: the folders it created are removed; otherwise the config.yaml
    files and data splits it wrote are removed and the config.yaml files it rewrote are restored."""
    from bissl.runtime import files_under, work_files

    now = files_under(out)
    if work_files(now) != work_files(before):
        return
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for relative in now:
        if relative not in before:
            (out / relative).unlink(missing_ok=True)
    for relative, text in configs.items():
        target = out / relative
        try:
            if target.read_text() != text:
                target.write_text(text)
        except OSError:
            continue
    for folder in sorted(_folders_under(out) - folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            continue


def _checkpoint_note(out: Path, before: dict[Path, tuple[int, int]]) -> str:
    """What a run stopped by non-finite values keeps: the checkpoint it wrote last, or that it wrote none."""
    from bissl.runtime import files_under

    checkpoints = {
        relative: stamp
        for relative, stamp in files_under(out).items()
        if relative.suffix == ".pt" and "checkpoints" in relative.parts
    }
    written = [relative for relative, stamp in checkpoints.items() if before.get(relative) != stamp]
    if written:
        newest = max(written, key=lambda relative: checkpoints[relative][0])
        return f"the last good checkpoint, {out / newest}, is kept"
    if checkpoints:
        return "no new checkpoint was written (the earlier ones are kept)"
    return "no checkpoint was written, so none is kept"


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


# OS errors that the user fixes (space, permissions, names): one line instead of a traceback.
USER_OS_ERRORS = {
    errno.ENOSPC: "free space, then rerun the same command",
    errno.EDQUOT: "free space, then rerun the same command",
    errno.EROFS: "make it writable or choose another folder",
    errno.EACCES: "make it writable or choose another folder",
    errno.EPERM: "make it writable or choose another folder",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a user error, 130 when interrupted by Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("bissl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (``bissl data list | head``): stop quietly, as command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
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
            name = ("demo-vit" if args.vit else "demo") + ("-quick" if args.quick else "")
            args.out = args.out or ("runs/demo-vit" if args.vit else "runs/demo")
            return _run_stage(STAGES["compare"], args, name, {})
        stage = STAGES[args.command]
        literal = {key: getattr(args, flag) for flag, key in stage.flag_keys.items() if getattr(args, flag)}
        if args.command == "study" and args.plan:
            return _study_plan(args, literal)
        return _run_stage(stage, args, args.config, literal)
    except StopRequested as stop:
        if distributed.is_main():
            print(f"bissl: {stop}; checkpoint written, rerun the same command to resume", file=sys.stderr)
        return stop.exit_code
    except BisslError as error:
        if args.debug:
            traceback.print_exc()
        print(f"bissl: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in USER_OS_ERRORS:
            raise
        if args.debug:
            traceback.print_exc()
        where = f" ('{error.filename}')" if error.filename else ""
        print(f"bissl: error: {error.strerror}{where}; {USER_OS_ERRORS[error.errno]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
