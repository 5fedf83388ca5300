"""The parity suite (issue 5): the twins compute the same thing, in inference and in training.

Each case of `parity.harness.compare.COVERING_CASES` runs every check once (module-scoped
fixture, so MindSpore compiles each graph once); each check is its own test.
Together the cases cover widths 0.35/0.75/1.0/1.4, inputs 96/160/224, 26 and
1000 classes, batch 1 and 4, MindSpore GRAPH and PYNATIVE modes.
Run alone with `python -m pytest tests/parity`.
"""
from __future__ import annotations

import numpy as np
import pytest

from parity.harness import compare

CHECKS = {
    "eval_logits": "eval logits",
    "train_forward": "train-mode forward",
    "train_loss": "train loss (MS vs PT)",
    "gradients_layer_by_layer": "gradients, layer by layer",
    "gradients_whole_net": "gradients, whole net",
    "bn_stats_one_forward": "BN stats after 1 forward",
    "weights_after_steps": "weights after 5 steps",
    "bn_stats_after_steps": "BN stats after 5 steps",
    "optimizer_rule": "optimizer rule, same grads, 5 steps",
}


@pytest.fixture(scope="module", params=compare.COVERING_CASES, ids=lambda case: case.label)
def case_results(request):
    # Loss, LR schedule and preprocessing do not depend on the case: tested once below.
    results = compare.run_case(request.param, include_case_free=False, include_preprocessing=False)
    return {result.name: result for result in results}


@pytest.mark.slow
@pytest.mark.parametrize("check", list(CHECKS))
def test_twins_agree(case_results, check):
    result = case_results[CHECKS[check]]
    assert result.passed, (
        f"{result.name}: abs {result.max_abs:.3e}, rel {result.max_rel:.3e} > {result.kind} {result.tolerance:g} "
        f"({result.detail})")


def test_covering_cases_cover_the_issue_matrix():
    cases = compare.COVERING_CASES
    assert {c.width for c in cases} >= {0.35, 0.75, 1.0, 1.4}
    assert {c.image_size for c in cases} >= {96, 160, 224}
    assert {c.num_classes for c in cases} >= {26, 1000}
    assert {c.batch for c in cases} >= {1, 4}
    assert {c.mode for c in cases} == {"graph", "pynative"}
    assert {c.fast_conv for c in cases} == {"off", "on"}  # MindSpore's own convolutions and ours


@pytest.mark.parametrize("num_classes,batch", [(26, 4), (1000, 1)])
def test_loss_matches_reference_formula(ms_pynative, num_classes, batch):
    for result in compare.check_loss(num_classes, batch, np.random.default_rng(num_classes)):
        assert result.passed, f"{result.name}: rel {result.max_rel:.3e}"


def test_lr_schedule_same_every_step(ms_pynative):
    result = compare.check_lr_schedule()
    assert result.passed and result.max_abs == 0.0, result


def test_harness_catches_a_wrong_weight(ms_pynative):
    """The checks can fail: the stem BN gamma off by 1% in the MindSpore twin is caught."""
    import mindspore as ms

    twins = compare.build_twins(compare.Case(width=0.35, image_size=32, num_classes=26, batch=2, mode="pynative"))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert compare.check_eval_logits(twins, x).passed
    gamma = twins.ms_net.backbone.features[0].features[1].gamma
    gamma.set_data(ms.Tensor(gamma.asnumpy() * 1.01))
    assert not compare.check_eval_logits(twins, x).passed


def test_name_map_covers_every_tensor_both_ways(ms_pynative):
    twins = compare.build_twins(compare.Case(width=1.4, image_size=32, num_classes=1000, batch=1, mode="pynative"))
    torch_state = compare._torch_state(twins.pt_net, twins.case)
    ms_state = compare._ms_state(twins.ms_net)
    assert set(torch_state) == set(ms_state) and len(ms_state) == 262
    assert all(np.array_equal(torch_state[k], ms_state[k]) for k in ms_state)
    gammas = [v for k, v in ms_state.items() if k.endswith("gamma")]
    assert not any(np.allclose(g, 1.0) for g in gammas)  # randomized, never identity
