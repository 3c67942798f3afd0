"""Recipe section `elad:` (used when `method: elad`). Owned by the elad method; defaults follow the paper."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EladConfig(BaseModel):
    """Settings of the elad method (filled in by its implementation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
