"""The closed and open gripper tokens of both published sets reach the robot as a closing and
an opening command through the policy node's own path: the backend ``create_backend`` builds
for the node (TorchBackend on a real checkpoint) decodes the ids, then ``output_gripper_command``
(the function ``magma_policy_node`` calls) runs them through a ``GripperHysteresis`` set up with
the node's default parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magma_ros.backends import PolicyBackend, create_backend, output_gripper_command
from magma_ros.codecs import PUBLISHED_STATISTICS, GripperHysteresis
from magma_ros.contract import PolicyNodeParameters


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from magma_ros.model import build_tiny_model, save_checkpoint

    model, tokenizer = build_tiny_model("magma-tiny", seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("magma_tiny_gripper"))


def _node_hysteresis(initial_open: bool) -> GripperHysteresis:
    params = PolicyNodeParameters()
    return GripperHysteresis(params.gripper_open_threshold, params.gripper_close_threshold,
                             initial_open=initial_open)


@pytest.mark.parametrize("statistics", sorted(PUBLISHED_STATISTICS))
def test_closed_and_open_tokens_become_closing_and_opening_commands(checkpoint: Path, statistics: str) -> None:
    backend: PolicyBackend = create_backend("torch", checkpoint=str(checkpoint), statistics=statistics)
    try:
        vocab = backend.codec.base_vocab_size  # type: ignore[attr-defined]
        lo, hi = backend.policy.action_token_range  # type: ignore[attr-defined]
        closed_token, open_token = vocab - 128, vocab - 256   # labels 0.0 and 1.0
        assert lo == open_token and lo <= closed_token <= hi
        middle = [vocab - 128] * 6

        closed = backend.output_from_tokens((*middle, closed_token))  # type: ignore[attr-defined]
        assert closed.valid and closed.statistics == statistics
        assert closed.action[6] == pytest.approx(0.0, abs=1e-6)
        was_open = _node_hysteresis(initial_open=True)
        assert output_gripper_command(was_open, closed) == 0.0 and not was_open.is_open

        opened = backend.output_from_tokens((*middle, open_token))  # type: ignore[attr-defined]
        assert opened.valid and opened.action[6] == pytest.approx(254 / 255, abs=1e-6)
        was_closed = _node_hysteresis(initial_open=False)
        assert output_gripper_command(was_closed, opened) == 1.0 and was_closed.is_open

        # the id next to the open one (same bin) opens too; an invalid output holds the state
        assert output_gripper_command(was_closed, backend.output_from_tokens((*middle, open_token + 1))) == 1.0
        assert output_gripper_command(was_closed, backend.output_from_tokens((*middle, hi + 1))) == 1.0
        assert output_gripper_command(was_open, backend.output_from_tokens((*middle, hi + 1))) == 0.0

        # and act() itself (the frame -> model -> decode path) returns what output_from_tokens makes
        out = backend.act(np.zeros((64, 64, 3), np.uint8), "pick up the red cube")
        again = backend.output_from_tokens(out.token_ids)  # type: ignore[attr-defined]
        assert out.valid and np.array_equal(out.action, again.action)
    finally:
        backend.close()
