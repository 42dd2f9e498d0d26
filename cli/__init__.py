"""`inf590k`: build the Inf-590K infrared corpus and pretrain DuGI-MAE on it.

Thin on purpose: parse options, build the library's config dataclasses, call, print the
one-line summary. This package is the only place that knows both `inf590k` and `pretrain`:
`app` (the group), `options` (the one way of declaring options), `build`, `dataset`, `model`,
`probe` and `demo` (the commands).
"""

from cli import build, dataset, demo, model, probe  # noqa: F401 - importing them registers the commands
from cli.app import CliError, main

__all__ = ["CliError", "main"]

if __name__ == "__main__":
    main()
