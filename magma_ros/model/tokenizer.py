"""The checkpoint's own tokenizer (``tokenizer.json`` through ``tokenizers``), with the
token names Magma relies on and the action-token range.

Action tokens: bin d (0..255) is token ``base_vocab - 1 - d``, so the range is
``[base_vocab - 256, base_vocab - 1]`` where ``base_vocab`` is the tokenizer's *base*
vocabulary (added/special tokens excluded: 128000 for LLaMA-3). The embedding matrix can
be larger (padded vocabulary); it never decides the range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from magma_ros.codecs.actions import DEFAULT_N_BINS, ActionCodec, TokenRange
from magma_ros.model.errors import TokenizerError

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
PAD_TOKEN = "<pad>"
IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<image_start>"
IMAGE_END_TOKEN = "<image_end>"
TRACE_START_TOKEN = "<trace_start>"
TRACE_END_TOKEN = "<trace_end>"
ACTION_TOKEN = "<action>"
# Tokens every Magma tokenizer carries (ids are read from tokenizer.json, never assumed).
MAGMA_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN, EOS_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, PAD_TOKEN, IMAGE_TOKEN,
    TRACE_START_TOKEN, TRACE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN, ACTION_TOKEN,
)
ACTION_BINS = DEFAULT_N_BINS
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# The action-token range is the codecs' TokenRange (one definition for model and decoding).
ActionTokenRange = TokenRange


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores tokens as strings or as {"content": ...} objects."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class MagmaTokenizer:
    """Thin wrapper over ``tokenizers.Tokenizer`` that knows Magma's token names.

    ``encode(text)`` applies the tokenizer's own post-processor (LLaMA-3's prepends
    ``<|begin_of_text|>``), exactly as the reference processor does.
    """

    def __init__(self, tokenizer: Tokenizer, bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN,
                 pad_token: str | None = PAD_TOKEN, source: str = "tokenizer.json") -> None:
        self.backend = tokenizer
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.bos_id = self.token_id(bos_token)
        self.eos_id = self.token_id(eos_token)
        self.pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        if self.base_vocab_size <= ACTION_BINS:
            raise TokenizerError(f"{source}: base vocabulary has {self.base_vocab_size} tokens, "
                                 f"too few to hold {ACTION_BINS} action bins")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> MagmaTokenizer:
        """Read ``tokenizer.json`` (required) and the token names in ``tokenizer_config.json`` /
        ``special_tokens_map.json`` (optional; LLaMA-3 names otherwise)."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found (a Magma checkpoint ships tokenizer.json)")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"{path}: cannot read tokenizer: {err}") from err
        names: dict[str, str | None] = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
        for fname in ("special_tokens_map.json", "tokenizer_config.json"):
            fpath = directory / fname
            if not fpath.is_file():
                continue
            try:
                data = json.loads(fpath.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise TokenizerError(f"{fpath}: cannot read ({err})") from err
            for key in names:
                text = _token_text(data.get(key))
                if text:
                    names[key] = text
        return cls(backend, bos_token=names["bos_token"] or BOS_TOKEN,
                   eos_token=names["eos_token"] or EOS_TOKEN, pad_token=names["pad_token"], source=str(path))

    # -- vocabulary ---------------------------------------------------------------------
    @property
    def base_vocab_size(self) -> int:
        """Size of the base (model) vocabulary, added tokens excluded."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    @property
    def vocab_size(self) -> int:
        """Size including added/special tokens."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def action_token_range(self) -> ActionTokenRange:
        return ActionCodec(self.base_vocab_size, ACTION_BINS).token_range

    def token_id(self, token: str) -> int:
        """Id of ``token``; TokenizerError naming the token and file when absent."""
        tid = self.backend.token_to_id(token)
        if tid is None:
            raise TokenizerError(f"{self.source}: token {token!r} is not in the vocabulary")
        return tid

    def has_token(self, token: str) -> bool:
        return self.backend.token_to_id(token) is not None

    # -- text ---------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- files --------------------------------------------------------------------------
    def save(self, directory: str | Path, model_max_length: int = 4096,
             chat_template: str | None = None) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        added = {
            str(tok_id): {"content": tok.content, "lstrip": tok.lstrip, "rstrip": tok.rstrip,
                          "normalized": tok.normalized, "single_word": tok.single_word,
                          "special": tok.special}
            for tok_id, tok in sorted(self.backend.get_added_tokens_decoder().items())
        }
        config: dict[str, Any] = {
            "added_tokens_decoder": added,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "clean_up_tokenization_spaces": True,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": model_max_length,
            "padding_side": "right",
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if chat_template is not None:
            config["chat_template"] = chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        if self.pad_token:
            special["pad_token"] = self.pad_token
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
