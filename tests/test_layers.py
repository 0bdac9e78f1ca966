"""A GGUF model's first layers as a model of their own (what the judge reads its state from), with the real embedded
model: the copy holds the same bytes for the blocks it keeps and none of the rest, is made once, and runs in
llama.cpp; a head trained on it is judged with it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGUFReader

from thresher.engines import EngineError, embedded_model_path, file_version
from thresher.engines.layers import (
    base_version,
    block_count,
    first_layers,
    gguf_file,
    layered_version,
    layers_of,
    load_first_layers,
)


def test_the_first_layers_keep_their_bytes_and_drop_the_rest() -> None:
    source = embedded_model_path()
    total = block_count(source)
    copy = first_layers(source, 4, file_version(source))
    assert block_count(copy) == 4 < total
    original = {t.name: t for t in GGUFReader(source).tensors}
    kept = {t.name: t for t in GGUFReader(copy).tensors}
    blocks = {int(n.split(".")[1]) for n in kept if n.startswith("blk.")}
    assert blocks == {0, 1, 2, 3}
    assert "token_embd.weight" in kept and "output_norm.weight" in kept
    assert set(original) - set(kept) == {n for n in original if n.startswith("blk.") and int(n.split(".")[1]) >= 4}
    for name, t in kept.items():
        assert t.tensor_type == original[name].tensor_type
        assert np.array_equal(np.asarray(t.data), np.asarray(original[name].data)), name
    # the tokenizer and chat template travel with it
    assert GGUFReader(copy).fields["tokenizer.chat_template"].contents() == \
        GGUFReader(source).fields["tokenizer.chat_template"].contents()


def test_the_copy_is_made_once_and_all_layers_are_the_file_itself() -> None:
    source = embedded_model_path()
    version = file_version(source)
    copy = first_layers(source, 3, version)
    made = os.stat(copy).st_mtime_ns
    assert first_layers(source, 3, version) == copy and os.stat(copy).st_mtime_ns == made
    assert first_layers(source, block_count(source), version) == source
    for k in (0, block_count(source) + 1):
        with pytest.raises(EngineError, match="layers"):
            first_layers(source, k, version)


def test_a_cache_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    source = embedded_model_path()
    with pytest.raises(EngineError, match="XDG_CACHE_HOME"):
        first_layers(source, 5, file_version(source))


def test_a_version_names_its_layers() -> None:
    v = layered_version("SmolLM2@abc", 10)
    assert v == "SmolLM2@abc/first10" and layers_of(v) == 10 and base_version(v) == "SmolLM2@abc"
    assert layered_version("SmolLM2@abc", None) == "SmolLM2@abc" and layers_of("SmolLM2@abc") is None
    with pytest.raises(EngineError, match="GGUF"):
        gguf_file("hf:HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.mark.slow
def test_the_first_layers_run_beside_the_serving_engine_and_give_another_state_than_the_whole_model(
        embedded_engine) -> None:
    """Beside the serving engine (on its scheduler thread, what a judge of the serving model gets) and on their own
    (what `thresher judge FILE` gets), the first layers give one state, not the whole model's."""
    from thresher.judge import head_engine
    from thresher.reward import Head

    beside = embedded_engine.first_layers(10)
    alone = load_first_layers("embedded", 10)
    try:
        assert beside.version == alone.version == f"{embedded_engine.version}/first10"
        assert beside.owner is embedded_engine and embedded_engine.first_layers(30) is embedded_engine
        prompt = [[{"role": "user", "content": "What is the capital of France?"}],
                  [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]]
        a, b, whole = beside.last_hidden(prompt), alone.last_hidden(prompt), embedded_engine.last_hidden(prompt)
        assert a.shape == whole.shape == (2, 576)
        assert np.allclose(a, b, atol=1e-3) and np.array_equal(a, beside.last_hidden(prompt))
        cos = (a * whole).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(whole, axis=1)
        assert (cos < 0.99).all()  # the state after 10 of 30 blocks, not the last one
        head = Head(f"{embedded_engine.version}/first10", "embedded", {"hidden": True}, [], [], [], [], [], 0.0)
        judged_by = head_engine(head, embedded_engine)
        assert judged_by.owner is embedded_engine and judged_by.version == head.engine_version
        judged_by.close()
    finally:
        beside.close()
        alone.close()
