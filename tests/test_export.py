"""Export: the GGUF written from transformers weights is the same model to llama.cpp; names map; the card says
what the model is."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thresher.cli import app
from thresher.train.export import ExportError, gguf_name, model_card


def test_weight_names_map_to_llama_cpp_names() -> None:
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_name("model.layers.7.self_attn.k_proj.weight") == "blk.7.attn_k.weight"
    assert gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert gguf_name("model.norm.weight") == "output_norm.weight"
    with pytest.raises(ExportError, match="no GGUF name"):
        gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq")


def test_the_model_card_names_base_data_judge_metrics_and_licence() -> None:
    card = model_card({"name": "thresher chat, round 3", "base": "SmolLM2.gguf", "data_commit": "3f2a9c1",
                       "examples": 120, "judge_version": "judge-r3-abc", "licence": "apache-2.0",
                       "metrics": {"win_rate": 0.56}, "round": 3, "gguf": True})
    for text in ("base_model: SmolLM2.gguf", "`3f2a9c1`", "| training examples | 120 |", "`judge-r3-abc`",
                 "win_rate: 0.56", "license: apache-2.0", "model.gguf"):
        assert text in card


def test_train_sft_refuses_bad_data_before_loading_any_model(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["train", "sft", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "no file at" in res.output
    (tmp_path / "bad.json").write_text('[{"instruction": "hi"}]')
    res = runner.invoke(app, ["train", "sft", "--data", str(tmp_path / "bad.json"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "row 1 is not valid alpaca" in " ".join(res.output.split())


@pytest.mark.slow
def test_the_exported_gguf_is_the_same_model_to_llama_cpp(tmp_path: Path) -> None:
    import numpy as np
    from llama_cpp import Llama

    from thresher.engines import embedded_model_path
    from thresher.train.export import export
    from thresher.train.sft import load_base

    base = embedded_model_path()
    model, tok = load_base(str(base))
    ex = export(model, tok, tmp_path / "out", base, {"name": "round trip"}, quantise="F16")
    assert ex.gguf is not None and (ex.hf_dir / "model.safetensors").exists()

    def last_logits(path: Path) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            llm = Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
        ids = llm.tokenize(b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                           special=True)
        llm.eval(ids)
        out = np.array(llm.scores[len(ids) - 1])
        llm.close()
        return out

    original, exported = last_logits(base), last_logits(ex.gguf)
    # F16 of the dequantised Q4_1 weights: the same model up to rounding (a wrong rotary permutation or a
    # misnamed tensor gives unrelated logits, correlation near 0)
    assert original.argmax() == exported.argmax()
    assert np.corrcoef(original, exported)[0, 1] > 0.99
