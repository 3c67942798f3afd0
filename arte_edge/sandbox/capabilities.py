"""What this OS and user actually enforce, probed once with a trivial sample."""

from __future__ import annotations

import os
import platform

from arte_edge.sandbox.run import run_tests

_capabilities: dict[str, str] | None = None


def sandbox_capabilities() -> dict[str, str]:
    """What this OS and user actually enforce, probed once with a trivial sample (cached)."""
    global _capabilities
    if _capabilities is None:
        result = run_tests("x = 1", ["assert x == 1"], timeout_s=10.0)
        caps = dict(result.limits)
        caps["platform"] = f"{platform.system()} {platform.release()}, euid {os.geteuid()}"
        caps["probe"] = "ok" if result.passed else f"FAILED: {result.error}"
        _capabilities = caps
    return dict(_capabilities)
