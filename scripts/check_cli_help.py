"""Print the ``--help`` text of ``globeflow`` and of every subcommand, for a before/after diff.

    PYTHONPATH=src python scripts/check_cli_help.py > before.txt    # on the old tree
    PYTHONPATH=src python scripts/check_cli_help.py > after.txt     # on the new tree
    diff before.txt after.txt                                       # a refactor: no output

The width is fixed (COLUMNS=100) so that argparse wraps the same way on every terminal. Each
help runs in a fresh ``python -m globeflow`` process, as a user would run it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _help(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run(
        [sys.executable, "-m", "globeflow", *args, "--help"], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout


def main() -> int:
    top = _help([])
    choices = re.search(r"\{([a-z,]+)\}", top)
    if choices is None:
        print("no subcommands found in globeflow --help", file=sys.stderr)
        return 1
    print("=== globeflow --help\n" + top)
    for name in choices.group(1).split(","):
        print(f"=== globeflow {name} --help\n" + _help([name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
