"""Character-level HF fast tokenizer for the embedded tasks.

One token per character keeps the tiny model's job pure arithmetic (no sub-word artefacts) and makes
``decode(encode(x)) == x`` exact. ``<think>``/``</think>`` are single *non-special* added tokens: they shorten
sequences, and vLLM decodes with ``skip_special_tokens=True``, which would otherwise drop them and break the verifier.
The ``Fuse`` decoder concatenates pieces, so incremental (streaming) detokenization is exact too.
"""
from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TAG_TOKENS = ("<think>", "</think>")
BASE_ALPHABET = tuple(c for c in string.printable if c not in "\r\x0b\x0c")  # ASCII printable, \n, \t


def build_tokenizer(texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Build the tokenizer; characters of ``texts`` outside printable ASCII are added (in sorted order)."""
    chars = list(BASE_ALPHABET)
    if texts is not None:
        extra = set().union(*(set(t) for t in texts)) - set(chars)
        chars += sorted(extra)
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    # A BPE model without merges and without a pre-tokenizer maps each character to its own id (spaces included).
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # HF's cleanup would rewrite " ." -> "." and break round-trips
        model_max_length=512,
        padding_side="left",  # batched generation pads on the left
    )
