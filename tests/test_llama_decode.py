"""The lean Llama decoder computes what transformers' LlamaModel computes, chunk by chunk on its own cache."""

from __future__ import annotations

import pytest
import torch

from controller.netllm.backbone import BackboneSpec, load_backbone
from controller.netllm.llama_decode import LlamaDecoder


@pytest.fixture(scope="module")
def body() -> torch.nn.Module:
    model, _ = load_backbone(BackboneSpec.parse("tiny"), device="cpu", dtype="float32")
    return model


def reference(body: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return body(inputs_embeds=tokens).last_hidden_state


@pytest.mark.parametrize("chunks", [(23,), (16, 7), (8, 1, 1, 13)])
def test_chunked_decoding_equals_one_full_forward(body, chunks: tuple[int, ...]) -> None:
    tokens = torch.randn(1, sum(chunks), body.config.hidden_size, generator=torch.Generator().manual_seed(1))
    decoder = LlamaDecoder(body, capacity=32)
    cache = decoder.new_cache()
    parts, start = [], 0
    with torch.inference_mode():
        for n in chunks:
            parts.append(decoder(tokens[:, start:start + n], cache))
            start += n
    assert cache.length == sum(chunks)
    torch.testing.assert_close(torch.cat(parts, 1), reference(body, tokens), rtol=1e-4, atol=1e-5)


def test_cache_grows_past_its_capacity(body) -> None:
    tokens = torch.randn(1, 20, body.config.hidden_size, generator=torch.Generator().manual_seed(2))
    decoder = LlamaDecoder(body, capacity=4)
    cache = decoder.new_cache()
    with torch.inference_mode():
        first, rest = decoder(tokens[:, :3], cache), decoder(tokens[:, 3:], cache)
    assert cache.keys.shape[2] >= 20
    torch.testing.assert_close(torch.cat([first, rest], 1), reference(body, tokens), rtol=1e-4, atol=1e-5)


def test_only_llama_bodies_qualify(body) -> None:
    from transformers import AutoModel, MistralConfig

    mistral = AutoModel.from_config(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=16,
                                                  sliding_window=8))
    assert LlamaDecoder.supports(body)
    assert not LlamaDecoder.supports(mistral)
    with pytest.raises(ValueError, match="Llama-architecture"):
        LlamaDecoder(mistral, capacity=8)
    with pytest.raises(ValueError, match=r"\(1, n, width\)"):
        LlamaDecoder(body, capacity=8)(torch.zeros(2, 3, body.config.hidden_size), None)


def test_bfloat16_bodies_decode_like_transformers() -> None:
    """The half-precision path (GPU serving) normalises in float32 and scales in bf16, as LlamaRMSNorm does."""
    body, _ = load_backbone(BackboneSpec.parse("tiny"), device="cpu", dtype="bfloat16")
    tokens = torch.randn(1, 12, body.config.hidden_size, generator=torch.Generator().manual_seed(3))
    decoder = LlamaDecoder(body, capacity=16)
    cache = decoder.new_cache()
    with torch.inference_mode():
        got = torch.cat([decoder(tokens[:, :9], cache), decoder(tokens[:, 9:], cache)], 1)
        want = body(inputs_embeds=tokens.bfloat16()).last_hidden_state
    assert got.dtype == torch.bfloat16 and cache.keys.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
