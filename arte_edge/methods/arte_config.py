"""Recipe section `arte:` (used when `method: arte`). Owned by the arte method; defaults follow the paper."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ArteConfig(BaseModel):
    """Settings of the arte method (filled in by its implementation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
