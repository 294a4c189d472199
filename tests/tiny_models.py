"""Tiny local tokenizers and Llama models for tests that run without a model hub.

``build_tokenizer`` trains a byte-level BPE or a word-level tokenizer, and
``build_llama`` saves a randomly initialised Llama model beside it. Both write
Hugging Face directories that ``from_pretrained`` and Axolotl can load.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pocl_axolotl.quickstart import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, wrap_with_bos


def build_tokenizer(
    path: str | Path,
    corpus: Iterable[str],
    *,
    word_level: bool = False,
    vocab_size: int = 384,
    with_pad_token: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``corpus`` and save it to ``path``.

    The tokenizer prepends ``<s>`` to every encoded text, like Llama tokenizers.

    Args:
        path: Directory to save the tokenizer into; created when missing.
        corpus: Training texts. A few sentences are enough.
        word_level: Build a word-level tokenizer, whose tokens are the words and
            punctuation marks of the corpus, with ``<unk>`` for any other word.
            A random model then samples corpus words, so its responses overlap
            references made of those words. The default is a byte-level BPE
            tokenizer, which encodes any text.
        vocab_size: Maximum vocabulary size, special tokens included. A byte-level
            vocabulary has at least 256 byte tokens.
        with_pad_token: Whether to add ``<pad>``. Without it the tokenizer has no
            pad token, as many base-model tokenizers have none.

    Returns:
        The tokenizer, with ``bos_token``, ``eos_token`` and, when requested,
        ``pad_token`` set, and ``unk_token`` for a word-level one.
    """
    special_tokens = [BOS_TOKEN, EOS_TOKEN]
    if with_pad_token:
        special_tokens.append(PAD_TOKEN)

    if word_level:
        special_tokens.insert(0, UNK_TOKEN)
        backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False
        )
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = wrap_with_bos(
        backend,
        pad_token=PAD_TOKEN if with_pad_token else None,
        unk_token=UNK_TOKEN if word_level else None,
    )
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_llama(
    path: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    *,
    max_position_embeddings: int = 512,
) -> LlamaForCausalLM:
    """Build a randomly initialised Llama model and save it with its tokenizer.

    The global torch random state is left as it was, so building a model does not
    change the random numbers a test draws afterwards.

    Args:
        path: Directory to save the model and tokenizer into; created when missing.
        tokenizer: Tokenizer whose vocabulary and special tokens the model uses.
        hidden_size: Width of the model; must be even, because it has 2 heads.
        num_layers: Number of decoder layers.
        seed: Seed of the weight initialisation.
        max_position_embeddings: Maximum sequence length in the config, in tokens.

    Returns:
        The model in float32, in eval mode.
    """
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model
