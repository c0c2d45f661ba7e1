"""The vLLM backend, without vLLM: what a user sees when the optional extra is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hubsdd.distill.backends.vllm import VLLMBackend
from hubsdd.errors import StageError
from hubsdd.recipe import GenerationSettings


def test_vllm_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(StageError) as err:
        VLLMBackend(tmp_path, GenerationSettings(backend="vllm"))
    assert err.value.fix == "pip install 'hubsdd[vllm]'"
