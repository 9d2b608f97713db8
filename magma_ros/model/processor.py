"""Inputs for Magma: anyres "crop" image preprocessing and the chat prompt.

Image: candidate crop grids (rows, cols) with rows*cols <= num_crops; the grid that keeps
the most effective resolution with the least waste wins (ties: first candidate, in the
reference order: cols outer, rows inner). The image is scaled to [0, 1], normalized with
CLIP mean/std, bilinearly resized (no antialias, aspect ratio not kept) to exactly
(rows*S, cols*S) and cut into S x S crops, row-major. ``image_size`` is (rows, cols); the
image then takes ``rows*g*(cols*g+1)`` embedding positions (g = S/32).

Prompt: LLaMA-3 chat headers, Magma's system message, the user turn, the assistant
generation header. The rendered text starts with ``<|begin_of_text|>`` (the chat
template's own) and the tokenizer's post-processor prepends a second one, because the
reference flow applies the chat template as *text* and then tokenizes it with default
special tokens. The published models were trained and evaluated on that doubled
begin-of-text sequence, so we reproduce it by default (``double_bos=False`` drops it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.functional import interpolate

from magma_ros.image_codec import resize_frame  # torch-free, shared with the dataset builder
from magma_ros.model.config import VISION_STRIDE, PreprocessorConfig
from magma_ros.model.errors import ImageError
from magma_ros.model.modeling import num_image_tokens
from magma_ros.model.tokenizer import (
    BOS_TOKEN,
    END_HEADER_TOKEN,
    EOS_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
    START_HEADER_TOKEN,
    MagmaTokenizer,
)

SYSTEM_MESSAGE = "You are agent that can see, talk and act."


def robot_action_query(task: str, images: int = 1) -> str:
    """Magma's robot action user turn for ``task`` (e.g. "pick up the red block"): one
    ``<image>`` line per image (the frame, then any ``action_regions`` crops), then the question."""
    if images < 1:
        raise ValueError(f"a robot action query needs at least one image, got {images}")
    return f"{IMAGE_TOKEN}\n" * images + f"What action should the robot take to {task}?"


def region_crops(frame: np.ndarray, regions: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """The pixels of each ``(x0, y0, x1, y1)`` box (fractions of ``frame``'s width and height,
    edges rounded to whole pixels, at least one pixel each way) of an (H, W, C) frame."""
    height, width = frame.shape[:2]
    crops = []
    for x0, y0, x1, y1 in regions:
        left, top = min(round(x0 * width), width - 1), min(round(y0 * height), height - 1)
        right, bottom = max(round(x1 * width), left + 1), max(round(y1 * height), top + 1)
        crops.append(frame[top:bottom, left:right])
    return crops


def candidate_grids(num_crops: int) -> list[tuple[int, int]]:
    """(rows, cols) candidates in the reference's order: cols 1..n outer, rows 1..n//cols inner."""
    return [(rows, cols) for cols in range(1, num_crops + 1) for rows in range(1, num_crops // cols + 1)]


def select_crop_grid(width: int, height: int, crop_size: int, num_crops: int) -> tuple[int, int]:
    """The (rows, cols) grid for a ``width`` x ``height`` image.

    Keeps the most effective resolution (pixels of the image after fitting it into the
    grid's canvas, capped at the original count), then the least wasted canvas.
    """
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height} pixels)")
    best, best_effective, best_waste = (1, 1), -1, float("inf")
    for rows, cols in candidate_grids(num_crops):
        canvas_w, canvas_h = cols * crop_size, rows * crop_size
        scale = min(canvas_w / width, canvas_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = canvas_w * canvas_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (rows, cols), effective, waste
    return best


@dataclass(frozen=True)
class ProcessedImage:
    """One preprocessed image: ``pixel_values`` (rows*cols, 3, S, S) float32, crops row-major;
    ``image_size`` (rows, cols); ``grid`` = S/32 feature cells per crop side."""

    pixel_values: torch.Tensor
    image_size: tuple[int, int]
    grid: int

    @property
    def num_tokens(self) -> int:
        rows, cols = self.image_size
        return num_image_tokens(rows, cols, self.grid)


def as_rgb_array(image: object, convert_rgb: bool = True) -> np.ndarray:
    """Validate an image and return it as an (H, W, 3) array.

    Accepts anything ``np.asarray`` understands (numpy arrays, PIL images): uint8 (0..255)
    or float (0..1) values. With ``convert_rgb``, gray (H, W) / (H, W, 1) images are
    replicated to 3 channels and RGBA drops alpha. Raises ImageError naming the problem.
    """
    try:
        arr = np.asarray(image)
    except Exception as err:
        raise ImageError(f"cannot read image of type {type(image).__name__}: {err}") from err
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageError(f"image dtype {arr.dtype} is not supported (uint8 0..255 or float 0..1)")
    if arr.ndim == 2 and convert_rgb:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageError(f"image must be H x W x 3, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image has zero size (shape {arr.shape})")
    channels = arr.shape[2]
    if convert_rgb and channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif convert_rgb and channels == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] != 3:
        raise ImageError(f"image must have 3 channels (RGB), got shape {arr.shape}")
    return arr


class MagmaImageProcessor:
    """Anyres "crop" preprocessing: ``__call__(image HxWx3) -> ProcessedImage``."""

    def __init__(self, config: PreprocessorConfig) -> None:
        self.config = config
        self._mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)

    @property
    def crop_size(self) -> int:
        return self.config.base_img_size

    @property
    def grid(self) -> int:
        return self.crop_size // VISION_STRIDE

    def __call__(self, image: object) -> ProcessedImage:
        arr = as_rgb_array(image, self.config.do_convert_rgb)
        height, width = arr.shape[:2]
        rows, cols = select_crop_grid(width, height, self.crop_size, self.config.num_crops)
        x = torch.from_numpy(np.require(arr, requirements=("C", "W"))).permute(2, 0, 1).to(torch.float32)
        if np.issubdtype(arr.dtype, np.integer):
            x = x / 255.0
        x = (x - self._mean) / self._std
        s = self.crop_size
        if (height, width) != (rows * s, cols * s):   # (at the same size bilinear is the identity)
            x = interpolate(x[None], size=(rows * s, cols * s), mode="bilinear", align_corners=False)[0]
        crops = x.view(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)
        return ProcessedImage(pixel_values=crops.contiguous(), image_size=(rows, cols), grid=self.grid)

    def with_regions(self, image: object, frame_size: int | None = None,
                     regions: Sequence[Sequence[float]] = ()) -> list[ProcessedImage]:
        """The images of one prompt: ``image`` (resized to ``frame_size`` squared when given), then the
        crops of ``regions`` of that frame (:func:`region_crops`), each processed. Serving
        (``MagmaPolicy.prepare_inputs``, the compiled backends) and training (``encode_example``) all
        call this, so a model is trained on exactly the images it is served."""
        arr = as_rgb_array(image, self.config.do_convert_rgb)
        if frame_size is not None:
            arr = resize_frame(arr, frame_size)
        return [self(a) for a in (arr, *region_crops(arr, regions))]


def render_chat(messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    """LLaMA-3 chat text: ``<|begin_of_text|>`` then per (role, content) a header block,
    the stripped content and ``<|eot_id|>``; then the assistant header if asked."""
    parts = [BOS_TOKEN]
    for role, content in messages:
        parts.append(f"{START_HEADER_TOKEN}{role}{END_HEADER_TOKEN}\n\n{content.strip()}{EOS_TOKEN}")
    if add_generation_prompt:
        parts.append(f"{START_HEADER_TOKEN}assistant{END_HEADER_TOKEN}\n\n")
    return "".join(parts)


class PromptBuilder:
    """Magma chat prompts tokenized with the checkpoint's own tokenizer.

    ``encode(user_content)`` returns the token ids the reference processor produces:
    ``[bos, bos, <header>system<end>, ..., <header>assistant<end>, "\\n\\n"]``.
    With ``use_im_start_end`` (config ``mm_use_image_start_end``) the ``<image>`` token is
    wrapped as ``<image_start><image><image_end>``, as the reference does.
    """

    def __init__(self, tokenizer: MagmaTokenizer, system_message: str = SYSTEM_MESSAGE,
                 use_im_start_end: bool = False, double_bos: bool = True) -> None:
        self.tokenizer = tokenizer
        self.system_message = system_message
        self.use_im_start_end = use_im_start_end
        self.double_bos = double_bos

    def text(self, user_content: str) -> str:
        messages = []
        if self.system_message:
            messages.append(("system", self.system_message))
        messages.append(("user", user_content))
        text = render_chat(messages)
        if self.use_im_start_end:
            text = text.replace(IMAGE_TOKEN, f"{IMAGE_START_TOKEN}{IMAGE_TOKEN}{IMAGE_END_TOKEN}")
        return text

    def encode(self, user_content: str) -> list[int]:
        return self.tokenizer.encode(self.text(user_content), add_special_tokens=self.double_bos)

    def action_prompt(self, instruction: str) -> list[int]:
        """Token ids of the robot action query for ``instruction``."""
        return self.encode(robot_action_query(instruction))
