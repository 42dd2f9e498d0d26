"""`python -m pretrain` / `torchrun --nproc-per-node N -m pretrain`: options from the config fields.

    python -m pretrain --shards 'data/640x512/shard-{000000..000099}.tar' --model dugi_mae_base \
        --out runs/base [options]
    python -m pretrain visualize CKPT --image PATH --out PNG
    python -m pretrain export CKPT --out DIR

Every pretraining option is one field of DataConfig, OptimConfig or RunConfig
(`--batch-size` is `batch_size`), so this parser and the `inf590k pretrain` command agree.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

_SCALARS = {"int": int, "float": float, "str": str}


def build_parser() -> argparse.ArgumentParser:
    """One `--kebab-name` option per config field (`pretrain.config.cli_options`); unset options
    keep the field's default."""
    from pretrain.config import cli_options  # torch: when the command runs

    parser = argparse.ArgumentParser(
        prog="python -m pretrain", description="Pretrain DuGI-MAE from Inf-590K shards."
    )
    for option in cli_options():
        help_text = option.help or f"default: {option.default}"
        if option.kind == "bool":
            parser.add_argument(
                option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif option.kind == "multiple":
            parser.add_argument(option.flag, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(option.flag, type=_SCALARS[option.kind], default=None, help=help_text)
    return parser


def _checkpoint_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pretrain {command}")
    parser.add_argument("checkpoint")
    if command == "visualize":
        parser.add_argument("--image", required=True, nargs="+")
    parser.add_argument("--out", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(argv)
    except (ValueError, FileNotFoundError, OSError) as err:  # bad input: one line, status 1
        print(f"error: {err}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "visualize":
        from pretrain.visualize import visualize_checkpoint  # torch: when the command runs

        args = _checkpoint_parser("visualize").parse_args(argv[1:])
        print(visualize_checkpoint(args.checkpoint, args.image, args.out))
        return 0
    if argv and argv[0] == "export":
        from pretrain.checkpoint import export_checkpoint  # torch: when the command runs

        args = _checkpoint_parser("export").parse_args(argv[1:])
        print(export_checkpoint(args.checkpoint, args.out))
        return 0
    if argv and argv[0] == "pretrain":
        argv = argv[1:]
    from pretrain.config import config_from_options  # torch: when the command runs
    from pretrain.train import pretrain  # torch: when the command runs

    args = build_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if v is not None}
    if not options.get("shards"):
        build_parser().error("--shards is required (paths, brace patterns or URLs)")
    result = pretrain(config_from_options(options))
    if result.is_main:
        print(result)  # the run's one closing line
    return 0

if __name__ == "__main__":
    sys.exit(main())
