"""Errors that the CLI turns into one clear line and a non-zero exit code.

Library code raises these instead of printing; `noisylm.cli.main` catches them.
"""

from __future__ import annotations


class NoisyLMError(Exception):
    """A problem with the user's input or environment. Exit code 1.

    The message should name the problem *and* the fix, on one line, e.g.
    ``"output directory out/ exists; pass --overwrite to replace it"``.
    """

    exit_code = 1


class UsageError(NoisyLMError):
    """Bad command-line usage or an invalid argument value. Exit code 2 (like argparse)."""

    exit_code = 2
