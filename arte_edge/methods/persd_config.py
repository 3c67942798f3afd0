"""Recipe section `persd:` (used when `method: persd`). Owned by the persd method; defaults follow the paper."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PersdConfig(BaseModel):
    """Settings of the persd method (filled in by its implementation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
