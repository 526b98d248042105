"""The ``dvtp`` command line (``dvtp --help``; ``python -m dvtp`` is the same).

Commands: ``info``, ``selftest``, ``demo``, ``answer``, ``visualize``, ``bench``
(docs/cli.md). click and rich are imported here only, never by ``import dvtp``; torch and
transformers only inside a command, after its options are checked (``--help`` and usage
errors stay fast).
"""
from __future__ import annotations

import click

from ._common import CONTEXT, Group
from .kernels import bench, info, selftest
from .model import answer, demo, visualize

__all__ = ["main"]


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="dvtp", prog_name="dvtp")
def main() -> None:
    """dvtp: RedVTP visual-token pruning kernels for diffusion VLMs.

    Exit codes: 0 ok, 1 failure, 2 bad usage. Every command takes --help, --quiet and
    --debug (traceback of an error); most take --json (one JSON document on stdout, also
    for an error: {"error": {type, message, option, exit_code}}).
    """


for _command in (info, selftest, demo, answer, visualize, bench):
    main.add_command(_command)
