"""Load a user's app object from ``path/to/file.py:attr`` or ``package.module:attr``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_app(spec: str) -> Any:
    target, _, attr = spec.partition(":")
    attr = attr or "sg"
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        if not path.exists():
            raise SystemExit(f"app file not found: {target}")
        name = f"sluicegate_user_app_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"{target} has no attribute {attr!r}") from None
