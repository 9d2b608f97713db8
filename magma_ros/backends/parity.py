"""Parity check a compiled backend passes before it serves (as NVIDIA's GR00T deployment does).

On a fixed probe set (seeded random frames and instructions) the backend must produce the
same greedy action tokens as the PyTorch model, and its per-step action logits must have
cosine similarity >= 0.999 with PyTorch's. The PyTorch reference logits come from one
stock ``LlamaForCausalLM`` forward over prompt + generated tokens (no cache), so the check
also covers the exported KV-cache wiring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COSINE_MIN = 0.999
PROBE_INSTRUCTIONS = ("pick up the red block", "put the carrot on the plate", "open the top drawer",
                      "move the sponge to the left", "close the drawer", "push the blue cube")


def probe_set(n: int, seed: int = 0, size: tuple[int, int] = (240, 320)) -> list[tuple[np.ndarray, str]]:
    """``n`` (frame, instruction) pairs: seeded random RGB frames of ``size`` (h, w)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frame = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        out.append((frame, PROBE_INSTRUCTIONS[int(rng.integers(len(PROBE_INSTRUCTIONS)))] if i else
                    PROBE_INSTRUCTIONS[0]))
    return out


@dataclass
class ParityReport:
    probes: int = 0
    token_mismatches: list[int] = field(default_factory=list)    # probe indices
    min_cosine: float = 1.0
    details: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.probes > 0 and not self.token_mismatches and self.min_cosine >= COSINE_MIN

    def summary(self) -> str:
        head = (f"{self.probes} probes, {len(self.token_mismatches)} with different tokens, "
                f"min logits cosine {self.min_cosine:.6f} (need >= {COSINE_MIN})")
        return head + ("; " + "; ".join(self.details[:3]) if self.details else "")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def torch_reference(policy, frame: np.ndarray, instruction: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Greedy ids from MagmaPolicy and (7, 256) action logits from one stock no-cache forward."""
    import torch

    step = policy.predict_action(frame, instruction)
    rng = policy.action_token_range
    prepared = policy.prepare_inputs(frame, policy.action_query(instruction), frame_size=policy.action_frame_size,
                                     regions=policy.action_regions)
    with torch.inference_mode():
        tail = policy.model.embed_tokens(torch.tensor(step.token_ids[:-1], device=policy.model.device))
        embeds = torch.cat((prepared.inputs_embeds, tail[None].to(prepared.inputs_embeds.dtype)), dim=1)
        logits = policy.model.language_model(inputs_embeds=embeds, use_cache=False).logits[0].float()
    n = len(step.token_ids)
    return step.token_ids, logits[-n:, rng.lo: rng.hi + 1].cpu().numpy()


def check_parity(backend, checkpoint: str | Path, probes: int = 4, seed: int = 0,
                 reference=None) -> ParityReport:
    """Compare a :class:`CompiledBackend` with PyTorch on ``probes`` probes.

    ``reference`` is a loaded :class:`MagmaPolicy` (loaded from ``checkpoint`` in float32 when None).
    """
    if reference is None:
        from magma_ros.model import MagmaPolicy

        reference = MagmaPolicy.from_pretrained(checkpoint, dtype="float32", device="cpu")
    report = ParityReport()
    for i, (frame, instruction) in enumerate(probe_set(probes, seed)):
        ref_ids, ref_logits = torch_reference(reference, frame, instruction)
        step = backend.policy.predict_action(frame, instruction)
        report.probes += 1
        if tuple(step.token_ids) != tuple(ref_ids):
            report.token_mismatches.append(i)
            report.details.append(f"probe {i}: {step.token_ids} vs torch {ref_ids}")
        for k in range(min(len(step.logits), len(ref_logits))):
            report.min_cosine = min(report.min_cosine, cosine(step.logits[k], ref_logits[k]))
    return report
