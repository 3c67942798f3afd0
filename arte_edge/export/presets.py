"""Export presets: named lists of artifact formats in the repository's top-level ``export/`` folder.

A preset YAML has the keys ``gguf`` (GGUF quant types), ``onnx`` (ONNX precisions) and an optional
``description``; ``load_export_preset`` turns it into the format specs a recipe's ``export.formats`` uses
(``["gguf:q4_k_m", "gguf:q8_0", "onnx:int4"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.formats import FORMATS

PRESETS_ENV = "ARTE_EDGE_EXPORT_PRESETS"
_KEYS = (*FORMATS, "description")


def presets_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: ``$ARTE_EDGE_EXPORT_PRESETS``, ./export, the repository's export/."""
    dirs = [Path(p) for p in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "export", Path(__file__).resolve().parents[2] / "export"]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def known_presets() -> list[str]:
    """Names of the presets found in :func:`presets_dirs`."""
    return sorted({p.stem for d in presets_dirs() for p in d.glob("*.yaml")})


def _find(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix in {".yaml", ".yml"} or os.sep in text:
        raise ArteError(f"{path}: export preset file not found; give a preset name "
                        f"({', '.join(known_presets())}) or a YAML path")
    for d in presets_dirs():
        if (d / f"{text}.yaml").is_file():
            return d / f"{text}.yaml"
    raise ArteError(f"unknown export preset {text!r}; known presets: {', '.join(known_presets()) or 'none found'}")


def load_export_preset(name_or_path: str | Path) -> list[str]:
    """Format specs of a preset given by name (``edge-cpu``) or YAML path, e.g. ``["gguf:q4_k_m", "onnx:int4"]``.

    ArteError naming the file and key for an unknown key, a non-list value or an unknown quant type.
    """
    import yaml

    path = _find(name_or_path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ArteError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ArteError(f"{path}: an export preset is a mapping with keys {', '.join(_KEYS)}")
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise ArteError(f"{path}: unknown key {unknown[0]!r}; an export preset has only {', '.join(_KEYS)}")
    specs: list[str] = []
    for fmt in FORMATS:
        values = data.get(fmt) or []
        if not isinstance(values, list):
            raise ArteError(f"{path}: {fmt}: expected a list like [{FORMATS[fmt][0]}], got {values!r}")
        for value in values:
            quant = str(value).strip().lower()
            if quant not in FORMATS[fmt]:
                raise ArteError(f"{path}: {fmt}: unknown type {value!r}; choose from {', '.join(FORMATS[fmt])}")
            spec = f"{fmt}:{quant}"
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise ArteError(f"{path}: the preset lists no formats; add a 'gguf' or 'onnx' list")
    return specs
