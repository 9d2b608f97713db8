"""``magma-tiny``: Magma's exact classes and parameter layout at toy sizes.

A ConvNeXt tower with Magma's block layout (Linear MLPs, ``gamma`` layer scales, named
``convnextxxlarge`` like the real one) at toy depths/dims, the same projector, a 2-4 layer
LLaMA, and a small byte-level BPE tokenizer trained on a built-in corpus of robot
instructions and answers. The tokenizer keeps Magma's special tokens (as added tokens
after the base vocabulary, like LLaMA-3) and reserves the last 256 *base* ids for the
action bins; the embedding matrix is padded past the tokenizer, as in Magma-8B, so code
that derives the action range from the embedding size fails the tests.

Variants are rows of :data:`TINY_VARIANTS`. Tests and benchmarks use
``build_tiny_model(name)`` and :func:`magma_ros.model.saving.save_checkpoint`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from magma_ros.model.config import MagmaConfig, TextConfig, VisionConfig
from magma_ros.model.errors import ConfigError
from magma_ros.model.modeling import MagmaForCausalLM
from magma_ros.model.processor import SYSTEM_MESSAGE
from magma_ros.model.tokenizer import (
    ACTION_BINS,
    BOS_TOKEN,
    END_HEADER_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    MAGMA_SPECIAL_TOKENS,
    PAD_TOKEN,
    START_HEADER_TOKEN,
    MagmaTokenizer,
)
from magma_ros.model.vision import VISION_BACKBONES, ConvNeXtSpec

END_OF_TEXT_TOKEN = "<|end_of_text|>"
# Added-token order of the tiny tokenizer (ids base_vocab, base_vocab+1, ...).
TINY_ADDED_TOKENS: tuple[str, ...] = (
    BOS_TOKEN, END_OF_TEXT_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, EOS_TOKEN, PAD_TOKEN,
    *[t for t in MAGMA_SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, START_HEADER_TOKEN,
                                                   END_HEADER_TOKEN, PAD_TOKEN)],
)


@dataclass(frozen=True)
class TinyVariant:
    """One ``magma-tiny`` size. ``embedding_multiple`` pads the embedding rows past the
    tokenizer's size (Magma-8B's embedding is larger than its tokenizer too)."""

    name: str
    vision_depths: tuple[int, ...] = (1, 1, 2, 1)
    vision_dims: tuple[int, ...] = (8, 16, 32, 64)
    vision_backbone: str = "convnextxxlarge"
    img_size: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    base_vocab_size: int = 1024
    embedding_multiple: int = 64
    max_position_embeddings: int = 4096


TINY_VARIANTS: dict[str, TinyVariant] = {
    v.name: v for v in (
        TinyVariant("magma-tiny"),
        TinyVariant("magma-tiny-4l", vision_depths=(1, 1, 3, 1), vision_dims=(16, 32, 64, 128),
                    hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256),
        # Magma-8B's crop size (512 -> 16x16 grid, 272 image tokens per crop): realistic sequence lengths
        TinyVariant("magma-tiny-512", vision_depths=(1, 1, 2, 1), vision_dims=(16, 32, 64, 128),
                    img_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                    intermediate_size=384),
        TinyVariant("magma-tiny-large", vision_backbone="convnextlarge"),
        # the shipped default (training/recipes/default_model.sh): 128-px crops, so a 256x256 robot
        # frame is seen at full resolution (2x2 crops, 8x8 feature cells) - the cubes are ~10 px wide
        TinyVariant("magma-tiny-sim", vision_depths=(1, 1, 2, 1), vision_dims=(16, 32, 64, 128),
                    img_size=128, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                    intermediate_size=256),
        # one 256-px crop: the tower sees the whole robot frame at once (8x8 feature cells whose
        # receptive fields span most of the image), so a token can carry where things are in the
        # frame, not only inside its crop (training/recipes/README.md, attempt 5)
        TinyVariant("magma-tiny-sim256", vision_depths=(1, 1, 2, 1), vision_dims=(16, 32, 64, 128),
                    img_size=256, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                    intermediate_size=256),
    )
}

_VERBS = ("pick up", "put", "move", "push", "open", "close", "place", "grasp", "lift", "stack", "turn on",
          "wipe", "slide", "knock over", "pour")
_OBJECTS = ("the red block", "the blue cube", "the coke can", "the sponge", "the drawer", "the carrot",
            "the spoon", "the green cup", "the eggplant", "the towel", "the apple", "the bowl", "the lid",
            "the yellow ball", "the pot", "the bottle")
_PLACES = ("on the plate", "into the basket", "to the left", "to the right", "in the sink", "on the towel",
           "near the bowl", "off the table", "into the top drawer", "onto the shelf")


def tiny_corpus() -> list[str]:
    """Built-in training text: robot instructions, action queries, mark and trace answers."""
    lines = [SYSTEM_MESSAGE, "What is in the image?", "The robot is holding the gripper open."]
    for i, verb in enumerate(_VERBS):
        for j, obj in enumerate(_OBJECTS):
            place = _PLACES[(i + j) % len(_PLACES)]
            task = f"{verb} {obj} {place}"
            lines.append(f"What action should the robot take to {task}?")
            lines.append(f"The robot is doing: {task}. To finish the task, how to move the numerical marks "
                         f"in the image for the next 8 steps?")
            x, y = (37 * i + 11 * j) % 256, (53 * j + 7 * i) % 256
            lines.append(f"Mark {i + 1} at [{x},{y}]. Mark {j + 2} at [{y},{x}]")
            lines.append(f'Mark {j + 1} at [{x},{y}] should be moved, and their future positions are: '
                         f'"Mark {j + 1}": "[[{x},{y}],[{x + 3},{y - 2}],[{x + 6},{y - 5}]]"')
    return lines


def build_tiny_tokenizer(base_vocab_size: int = 1024) -> MagmaTokenizer:
    """Train the byte-level BPE tokenizer of ``magma-tiny``.

    Base vocabulary = ``base_vocab_size`` ids: BPE tokens, filler ids if the corpus runs
    out of merges, and the last 256 ids reserved for action bins. Magma's special tokens
    follow as added tokens, and a post-processor prepends ``<|begin_of_text|>`` like
    LLaMA-3's tokenizer.json.
    """
    if base_vocab_size < 256 + ACTION_BINS + 1:
        raise ConfigError(f"base_vocab_size must be > {256 + ACTION_BINS}, got {base_vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=base_vocab_size - ACTION_BINS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(tiny_corpus(), trainer)
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    filler = 0
    while len(vocab) < base_vocab_size - ACTION_BINS:
        vocab[f"<unused_{filler}>"] = len(vocab)
        filler += 1
    for slot in range(ACTION_BINS):
        vocab[f"<action_slot_{slot}>"] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_ADDED_TOKENS])
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return MagmaTokenizer(tok, source="magma-tiny tokenizer")


def tiny_config(variant: TinyVariant, tokenizer: MagmaTokenizer) -> tuple[MagmaConfig, ConvNeXtSpec]:
    """The Magma config and tower spec of a tiny variant for ``tokenizer``."""
    rows = math.ceil(tokenizer.vocab_size / variant.embedding_multiple) * variant.embedding_multiple
    text = TextConfig(
        vocab_size=rows, hidden_size=variant.hidden_size, intermediate_size=variant.intermediate_size,
        num_hidden_layers=variant.num_layers, num_attention_heads=variant.num_heads,
        num_key_value_heads=variant.num_kv_heads, max_position_embeddings=variant.max_position_embeddings,
        bos_token_id=tokenizer.bos_id, eos_token_id=(tokenizer.eos_id,), pad_token_id=tokenizer.pad_id,
    )
    vision = VisionConfig(vision_backbone=variant.vision_backbone, img_size=variant.img_size,
                          mm_hidden_size=variant.vision_dims[-1])
    known = VISION_BACKBONES.get(variant.vision_backbone)
    spec = ConvNeXtSpec(depths=variant.vision_depths, dims=variant.vision_dims,
                        norm_eps=known.norm_eps if known else 1e-6)
    config = MagmaConfig(text=text, vision=vision, image_token_index=tokenizer.token_id(IMAGE_TOKEN),
                         tokenizer_model_max_length=variant.max_position_embeddings)
    return config, spec


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Re-initialize every parameter reproducibly with a scale that keeps activations O(1):
    weights ~ N(0, 1/fan_in), embeddings and separators ~ N(0, 1), norms ~ 1 + N(0, 0.1),
    layer scales (``gamma``) ~ U(0.5, 1.5), biases ~ N(0, 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                values = 0.5 + torch.rand(p.shape, generator=gen)
            elif "embed_tokens" in name or "seperator" in name:
                values = torch.randn(p.shape, generator=gen)
            elif leaf == "bias":
                values = 0.02 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 1:
                values = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel()
                values = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            p.copy_(values.to(p.dtype))


def build_tiny_model(variant: str | TinyVariant = "magma-tiny",
                     seed: int = 0) -> tuple[MagmaForCausalLM, MagmaTokenizer]:
    """An untrained, randomly initialized (``seed``) tiny Magma in float32, eval mode,
    with its tokenizer."""
    if isinstance(variant, str):
        if variant not in TINY_VARIANTS:
            raise ConfigError(f"unknown tiny variant {variant!r} (known: {sorted(TINY_VARIANTS)})")
        variant = TINY_VARIANTS[variant]
    tokenizer = build_tiny_tokenizer(variant.base_vocab_size)
    config, spec = tiny_config(variant, tokenizer)
    model = MagmaForCausalLM(config, spec)
    randomize_(model, seed)
    model.eval()
    return model, tokenizer
