"""Intake of causal LMs (worker/llm/checkpoint.py): hf folders (also as a .tar.gz), GGUF files, and the clear
refusals: no tokenizer, an architecture the builder does not know, a checkpoint over the memory limit, a file
that is not GGUF, a GGUF tensor type that cannot be dequantized, a GGUF architecture transformers cannot read."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lathe.worker.errors import InvalidInput
from lathe.worker.llm.checkpoint import check_memory, from_gguf, from_hf


def _folder_like(src: Path, dst: Path, skip: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """A checkpoint folder with src's files (symlinks: no copy of the 540 MB weights), some left out."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.startswith("."):
            (dst / f.name).symlink_to(f)
    if config is not None:
        (dst / "config.json").unlink()
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_gguf_and_its_hf_folder_read_the_same_model(smollm2):
    ck = smollm2.checkpoint
    assert ck.format == "gguf" and ck.architecture == "LlamaForCausalLM"
    assert 134e6 < ck.params < 135e6  # SmolLM2-135M
    assert any("Q4_1" in n and "rounding" in n for n in ck.notes)  # the baseline's own rounding is reported
    hf = from_hf(ck.folder, str(ck.folder))
    assert hf.format == "hf" and hf.architecture == ck.architecture
    assert hf.params == ck.params  # safetensors headers and GGUF tensor shapes count the same weights
    assert (hf.folder / "tokenizer.json").is_file()


def test_missing_tokenizer_is_refused(smollm2, tmp_path):
    folder = _folder_like(smollm2.checkpoint.folder, tmp_path / "ck", skip=("tokenizer.json",))
    with pytest.raises(InvalidInput, match="no tokenizer.json"):
        from_hf(folder, "pvc://models/ck")


def test_an_architecture_the_builder_does_not_know_is_refused(smollm2, tmp_path):
    cfg = {**smollm2.checkpoint.config, "architectures": ["RwkvForCausalLM"]}
    folder = _folder_like(smollm2.checkpoint.folder, tmp_path / "ck", config=cfg)
    with pytest.raises(InvalidInput, match="architecture RwkvForCausalLM is not one the onnxruntime-genai model "
                                           "builder .* can export .*LlamaForCausalLM"):
        from_hf(folder, "pvc://models/ck")


def test_a_checkpoint_over_the_memory_limit_is_refused_before_loading(smollm2, monkeypatch):
    monkeypatch.setenv("LATHE_MEMORY_LIMIT", str(512 << 20))
    with pytest.raises(InvalidInput, match=r"135M parameters need about 3\.5 GiB .* memory limit of 0\.5 GiB"):
        from_hf(smollm2.checkpoint.folder, "pvc://models/smollm2")
    with pytest.raises(InvalidInput, match="memory limit"):
        from_gguf(smollm2.gguf, "pvc://models/smollm2.gguf")
    monkeypatch.setenv("LATHE_MEMORY_LIMIT", str(8 << 30))
    check_memory(smollm2.checkpoint.params, "x")  # 3.5 GiB fit in 8


def test_hf_archive_is_unpacked_once(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("LATHE_LLM_CACHE", str(tmp_path / "cache"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = tmp_path / "tiny"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    model.save_pretrained(tiny)
    (tiny / "tokenizer.json").symlink_to(smollm2.checkpoint.folder / "tokenizer.json")  # intake only checks it is there
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz", dereference=True) as tf:
        tf.add(tiny, arcname="tiny")
    ck = from_hf(archive, "s3://models/tiny.tar.gz")
    assert ck.folder.name == "tiny" and ck.folder.parent.parent == tmp_path / "cache" / "checkpoints"
    assert ck.params == sum(p.numel() for p in model.parameters())
    again = from_hf(archive, "s3://models/tiny.tar.gz")
    assert again.folder == ck.folder and again.fingerprint == ck.fingerprint
    with pytest.raises(InvalidInput, match="format hf expects a checkpoint folder .* or a .tar or .tar.gz"):
        from_hf(tiny / "config.json", "https://example.com/config.json")


def test_a_file_that_is_not_gguf_is_refused(tmp_path, smollm2):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all" * 10)
    with pytest.raises(InvalidInput, match="not a GGUF file"):
        from_gguf(bad, "pvc://m/model.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2.gguf.read_bytes()[: 1 << 16])  # the header and part of the tensor index
    with pytest.raises(InvalidInput, match="unreadable GGUF"):
        from_gguf(cut, "pvc://m/cut.gguf")


def _tiny_gguf(path: Path, arch: str, tensor: np.ndarray) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_tensor_type_that_cannot_be_dequantized_is_refused(tmp_path):
    path = _tiny_gguf(tmp_path / "ints.gguf", "llama", np.arange(64, dtype=np.int32).reshape(8, 8))
    with pytest.raises(InvalidInput, match="1 tensor\\(s\\) of type I32 cannot be dequantized"):
        from_gguf(path, "pvc://m/ints.gguf")
    ok = _tiny_gguf(tmp_path / "floats.gguf", "rwkv6", np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(InvalidInput, match="GGUF architecture 'rwkv6' cannot be converted by transformers"):
        from_gguf(ok, "pvc://m/floats.gguf")
