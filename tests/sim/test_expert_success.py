"""Acceptance: the scripted expert succeeds on >= 98% of 100 seeds for each task family.

No rendering; one workcell reused across episodes. About 5 s (reach) and 15 s (pick) on
one core.
"""

import pytest

from magma_ros.sim import ScriptedExpert, Workcell, run_episode, task_for_seed

SEEDS = range(100)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["reach", "pick"])
def test_expert_success_rate(family):
    failures = []
    with Workcell() as cell:
        for seed in SEEDS:
            task = task_for_seed(family, seed)
            result = run_episode(task, seed, ScriptedExpert(task), workcell=cell)
            if not result.success:
                failures.append(seed)
    rate = 1 - len(failures) / len(SEEDS)
    assert rate >= 0.98, f"{family}: success {rate:.0%}, failed seeds {failures}"
