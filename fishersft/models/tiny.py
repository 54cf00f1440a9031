"""Build a tiny causal LM and a tokenizer trained on given text, saved with `save_pretrained`.

No model hub is reachable from where fishersft is built and tested, so tests and the embedded demo use a model
made here, loaded through the same code path as any real model directory.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    arch: Literal["llama", "gpt2"] = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Train a byte-level BPE tokenizer on `texts`, build a randomly initialised model, save both."""
    out = Path(out_dir)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    ids = {t: _token_id(tokenizer, t) for t in SPECIAL_TOKENS}
    vocab, bos, eos = len(tokenizer), ids["<s>"], ids["</s>"]
    torch.manual_seed(seed)
    model: PreTrainedModel
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            pad_token_id=ids["<pad>"],
            vocab_size=vocab,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        model = LlamaForCausalLM(config)
    else:
        gpt2 = GPT2Config(
            n_embd=hidden_size,
            n_layer=layers,
            n_head=4,
            n_positions=max_positions,
            vocab_size=vocab,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        model = GPT2LMHeadModel(gpt2)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(i, int)  # one token in, one id out (a list of ids is for a list of tokens)
    return i
