"""The `noisylm` command line: a thin layer over the library.

Each module in this package registers the subcommands of one stage of the data flow and calls one
public library function per subcommand. Heavy imports (torch, matplotlib) happen inside the handlers,
so `noisylm --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from noisylm import __version__
from noisylm.errors import NoisyLMError

# In data-flow order; each module defines `register(subparsers)`.
COMMAND_MODULES = (
    "noisylm.cli.data",  # prepare, inject, stats, verify
    "noisylm.cli.train",  # train, eval, sample, export
    "noisylm.cli.experiments",  # sweep, report
    "noisylm.cli.theory",  # theory
    "noisylm.cli.scan",  # scan
    "noisylm.cli.features",  # extract
    "noisylm.cli.probe",  # probe
    "noisylm.cli.study",  # lgm-study
    "noisylm.cli.finetune",  # finetune
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the line breaks of descriptions/epilogs."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noisylm",
        description="Study and mitigate random noise in language-model pre-training data.\n\n"
        "Data flow: prepare -> inject -> train -> sweep/report -> theory; scan your own corpus;\n"
        "extract -> probe for the Local Gradient Matching (LGM) loss.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"noisylm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a stage not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except NoisyLMError as exc:
        print(f"noisylm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"noisylm {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
