"""Errors for bad input data: the message names the file, the line (or row) and what is wrong."""


class DataError(ValueError):
    """Malformed or missing data (question files, corpora). The CLI reports it and exits with code 2."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = f"{path}:{line}: " if path and line is not None else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ConfigError(ValueError):
    """A configuration problem, with a message that says where it is and what to change (CLI: exit 2)."""
