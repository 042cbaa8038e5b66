"""Reading a JSON file that a user or an earlier run handed us, with an error that names the file.

Each component raises its own error class (a checkpoint problem is a CheckpointError, a model
directory problem a PretrainedError, ...), so the class is a parameter; the wording is shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], hint: str = "") -> Any:
    """The parsed content of `path`; a missing, undecodable or malformed file raises `error`
    naming the path and what is wrong, followed by `hint` (e.g. what to run to remake it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: not found{hint}") from None
    except OSError as e:  # unreadable: permissions, a directory where a file should be, an I/O error
        raise error(f"{path}: cannot read ({e.strerror or e}){hint}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}){hint}") from None
