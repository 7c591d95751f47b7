"""A word-level tokenizer built from a caption vocabulary (for small text-conditioned models trained here)."""
from __future__ import annotations


def word_tokenizer(words: list[str], max_length: int = 16):
    """PreTrainedTokenizerFast over lower-cased whitespace/punctuation-split words.

    Ids: 0 <|pad|>, 1 <|startoftext|>, 2 <|endoftext|>, 3 <|unk|>, then `words` (deduplicated, in order).
    Encodes as <|startoftext|> words... <|endoftext|>, padded with <|pad|> to max_length.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + [w.lower() for w in words]))}
    tk = Tokenizer(WordLevel(vocab, unk_token="<|unk|>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", unk_token="<|unk|>",
                                   bos_token="<|startoftext|>", eos_token="<|endoftext|>", model_max_length=max_length)
