"""The one error type users see: a single line naming the file/key and the fix; the CLI exits 2."""

from __future__ import annotations


class ArteError(Exception):
    """A user-facing failure (bad input, missing file, corrupt model). The CLI prints it on one line."""

    exit_code = 2


class ConfigError(ArteError):
    """A recipe failed validation; ``problems`` lists every error found, each naming its key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        joined = "; ".join(problems)
        super().__init__(f"{source}: {len(problems)} problem(s): {joined}")
