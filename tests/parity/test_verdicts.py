"""Parity verdicts calibrated against float64: they hold on any checkpoint and any CPU, and still catch a change.

- the verdict arithmetic (parity.core.verdict) on arrays made here;
- ReLU6 kinks: a float32 pre-activation on the other side of 0 than float64 neither fails nor hides a row;
- checkpoints like the ones people have (parity.harness.sample_weights): calibrated random-init and
  extreme-BatchNorm nets at widths 0.35, 1.0 and 1.4: `diff` passes on identical weights in both
  directions, `check --weights` passes, and a 1% change to one block's weights fails, naming that block
  (eval on the extreme nets, train mode and the CLI on the 1.0x extreme net);
- instruction sets: the same under ONEDNN_MAX_CPU_ISA=AVX2 and kernels built for x86-64-v3.
The default `python -m parity check` case is in test_check_default.py: the suite's slowest test, in a file of
its own so that the test workers (`--dist loadfile`) can run it beside this file.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from parity.core import converter as cv
from parity.core import tolerances
from parity.core.verdict import EPS32, calibrated, calibrated_tensors, within_noise
from parity.harness import compare, diff
from parity.harness.golden import flipped, float64_twin, masks_of, torch_relu6_inputs, use_masks
from parity.harness.sample_weights import perturb_block, sample_state, write_pth

IMAGE_SIZE = 64
PERTURBED_BLOCK = 7


# ----------------------------------------------------------------------------- the arithmetic

def test_candidate_within_the_noise_multiple_passes_and_beyond_fails():
    rng = np.random.default_rng(0)
    golden = rng.standard_normal(1000)
    reference = golden + 1e-6 * rng.standard_normal(1000)
    noise = np.max(np.abs(reference - golden)) / np.max(np.abs(golden))
    close = golden + 0.5 * tolerances.NOISE_MULTIPLE * (reference - golden)
    far = golden + 2.0 * tolerances.NOISE_MULTIPLE * (reference - golden)
    assert calibrated(close, reference, golden).passed
    verdict = calibrated(far, reference, golden)
    assert not verdict.passed and verdict.ratio == pytest.approx(2 * tolerances.NOISE_MULTIPLE, rel=1e-6)
    assert verdict.noise == pytest.approx(noise)


def test_zero_noise_leaves_only_the_absolute_floor():
    golden = np.linspace(-1.0, 1.0, 101)
    assert calibrated(golden.copy(), golden, golden).passed  # exact everywhere: ratio 0
    few_ulps = golden + 2 * EPS32  # within ABS_FLOOR_EPS ulps of a unit scale
    assert calibrated(few_ulps, golden, golden).passed
    assert not calibrated(golden + 1e-3, golden, golden).passed
    assert not within_noise(float("nan"), 1.0) and not within_noise(float("inf"), 1.0)


def test_groups_keep_a_deep_stage_noise_from_hiding_a_shallow_divergence():
    rng = np.random.default_rng(1)
    golden = {"features.1.w": rng.standard_normal(500), "features.17.w": rng.standard_normal(500)}
    reference = {"features.1.w": golden["features.1.w"] + 1e-7 * rng.standard_normal(500),
                 "features.17.w": golden["features.17.w"] + 1e-4 * rng.standard_normal(500)}
    candidate = {"features.1.w": golden["features.1.w"] + 1e-5 * rng.standard_normal(500),  # 100x its noise
                 "features.17.w": reference["features.17.w"]}
    stage = lambda name: name.split(".")[1]  # noqa: E731
    verdict = calibrated_tensors(candidate, reference, golden, stage)
    assert not verdict.passed and verdict.where == "features.1.w"
    # one pooled group would have let it through: the deep stage's rounding sets that group's floor
    assert calibrated_tensors(candidate, reference, golden).passed


# ----------------------------------------------------------------------------- kinks

def test_a_kink_flip_is_compared_along_each_side_masks_not_tolerated():
    """A pre-activation just below 0 in float32 and just above in float64: the golden along float32's masks
    gives float32's gradient to rounding, and the flip is counted; along its own masks it would not."""
    import torch

    layer = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=True), torch.nn.ReLU6())
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.25]] * 3) * torch.tensor([[1.0], [2.0], [3.0]]))
        layer[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
    x32 = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    golden = float64_twin(layer)
    with torch.no_grad():  # move the first unit's float64 pre-activation just above the kink
        golden[0].bias.copy_(torch.tensor([1e-12, 0.0, 0.0], dtype=torch.float64))
    with torch_relu6_inputs(layer) as pre32:
        layer(x32.requires_grad_(True)).sum().backward()
    with torch_relu6_inputs(golden) as pre64:
        golden(x32.double()).sum().backward()
    own_grad = golden[0].weight.grad.numpy().copy()
    golden.zero_grad()
    x64 = x32.detach().double()
    with use_masks(golden, masks_of(pre32)):
        golden(x64).sum().backward()
    along_float32 = golden[0].weight.grad.numpy()
    assert flipped(masks_of(pre32), masks_of(pre64)) == 1
    assert np.array_equal(along_float32, layer[0].weight.grad.numpy())
    assert not np.array_equal(own_grad, along_float32)


# ----------------------------------------------------------------------------- checkpoints people have

CHECKPOINTS = [(width, extreme) for width in (0.35, 1.0, 1.4) for extreme in (False, True)]


def _label(item) -> str:
    return f"{item[0]}x-{'extreme' if item[1] else 'calibrated'}"


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample_weights")
    files = {}
    for width, extreme in CHECKPOINTS:
        state = sample_state(width, 26, seed=3, image_size=IMAGE_SIZE, extreme=extreme)
        stem = folder / _label((width, extreme)).replace(".", "p")  # no dot: with_suffix would cut the width
        pth = write_pth(state, stem.with_suffix(".pth"))
        ckpt = stem.with_suffix(".ckpt")
        cv.write_checkpoint(cv.convert(cv.read_checkpoint(pth), "ms-official"), ckpt)
        perturbed = folder / f"{stem.name}-block{PERTURBED_BLOCK}.ckpt"
        cv.write_checkpoint(cv.convert(cv.checkpoint_from_state(perturb_block(state, PERTURBED_BLOCK)),
                                       "ms-official"), perturbed)
        files[(width, extreme)] = (pth, ckpt, perturbed)
    return files


def _diff(reference: Path, candidate: Path, mode: str = "eval") -> diff.DiffReport:
    sides = []
    for path in (reference, candidate):
        ckpt = cv.read_checkpoint(path)
        sides.append(diff.Side(str(path), ckpt, diff.FRAMEWORK_OF_LAYOUT[ckpt.layout]))
    diff.use_cpu_pynative()
    batch = diff.random_batch(2, IMAGE_SIZE, 0)
    return diff.diff_checkpoints(sides[0], sides[1], (batch, batch), diff.Options(mode=mode), "random batch")


def _failing(report: diff.DiffReport) -> str:
    return "; ".join(f"{r.name} ratio {r.calibration.ratio:.2f}" for r in report.rows if not r.passed)


def test_sample_checkpoints_are_what_they_claim(checkpoint_files):
    for (width, extreme), (pth, _, _) in checkpoint_files.items():
        state = cv.read_checkpoint(pth).tensors
        amplifiers = 0
        for name in (k for k in state if k.endswith("running_var")):
            variance, gamma = state[name], state[name.replace("running_var", "weight")]
            assert not np.allclose(variance, 1.0, atol=0.1), name  # calibrated on data, not the init's
            amplifiers += int(np.sum((variance < 3e-4) & (gamma > 5.0)))
        # extreme: in every BatchNorm a few channels amplify their input x100-x1000; calibrated: none
        batch_norms = sum(1 for k in state if k.endswith("running_var"))
        assert amplifiers >= batch_norms if extreme else amplifiers == 0


@pytest.mark.slow
@pytest.mark.parametrize("item", CHECKPOINTS, ids=_label)
def test_diff_passes_on_identical_weights_and_names_a_changed_block(checkpoint_files, item):
    """Identical weights pass: PyTorch's file against MindSpore's for the calibrated net of each width, the other
    way round for the extreme one (each width both directions). On the extreme nets, whose noise floor is the
    highest, a 1% change to one block fails and names that block."""
    pth, ckpt, perturbed = checkpoint_files[item]
    extreme = item[1]
    report = _diff(ckpt, pth) if extreme else _diff(pth, ckpt)
    assert report.passed, _failing(report)
    assert all(r.calibration is not None for r in report.rows)
    if not extreme:
        return
    broken = _diff(pth, perturbed)
    assert not broken.passed and broken.first_divergent == f"features.{PERTURBED_BLOCK}"
    # stages before the change still agree: the verdict names the block, not the first noisy row
    assert all(r.passed for r in broken.rows[:PERTURBED_BLOCK])


@pytest.mark.slow
def test_diff_train_mode_passes_on_identical_weights(checkpoint_files):
    """Train mode in process on a calibrated net; on the 1.0x extreme one through the CLI (test below)."""
    pth, ckpt, perturbed = checkpoint_files[(0.35, False)]
    report = _diff(ckpt, pth, "train")
    assert report.passed, _failing(report)
    assert any(r.kind == "gradient" for r in report.rows)
    broken = _diff(pth, perturbed, "train")
    assert not broken.passed and broken.first_divergent == f"features.{PERTURBED_BLOCK}"


@pytest.mark.slow
@pytest.mark.parametrize("item", [(1.4, True), (0.35, False)], ids=_label)
def test_check_passes_on_checkpoints(checkpoint_files, item):
    pth, _, _ = checkpoint_files[item]
    case = compare.case_for_weights(compare.Case(image_size=IMAGE_SIZE, batch=2, mode="pynative", steps=2,
                                                 weights=str(pth)))
    assert (case.width, case.num_classes) == (item[0], 26)
    results = compare.run_case(case, include_case_free=False, include_preprocessing=False)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


@pytest.mark.slow
def test_check_names_the_block_of_a_twin_that_differs(checkpoint_files, ms_pynative):
    """The MindSpore twin given one block's weights changed by 1%: the gradient rows fail and name it."""
    pth, _, _ = checkpoint_files[(0.35, True)]
    case = compare.case_for_weights(compare.Case(image_size=IMAGE_SIZE, batch=2, mode="pynative", weights=str(pth)))
    twins = compare.build_twins(case)
    rng = np.random.default_rng(0)
    for param in twins.ms_net.get_parameters():
        if param.name.startswith(f"features.{PERTURBED_BLOCK}.") and param.name.endswith(".weight"):
            value = param.asnumpy()
            param.set_data(ms_pynative.Tensor((value * (1 + 0.01 * rng.standard_normal(value.shape)))
                                              .astype(np.float32)))
    x = rng.standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    assert not compare.check_eval_logits(twins, x).passed
    layers = compare.check_layer_gradients(twins, rng)
    assert not layers.passed and layers.calibration.where.startswith(f"features.{PERTURBED_BLOCK}.")


# ----------------------------------------------------------------------------- instruction sets, as users run it

@pytest.mark.slow
def test_diff_cli_under_other_instruction_sets(checkpoint_files, tmp_path, python_exe, repo_root, cli_env):
    """oneDNN held to AVX2 and our kernels built for x86-64-v3 (another cached library): same verdicts."""
    pth, ckpt, perturbed = checkpoint_files[(1.0, True)]
    env = dict(cli_env, ONEDNN_MAX_CPU_ISA="AVX2", MBV2_KERNEL_MARCH="x86-64-v3",
               MBV2_KERNEL_CACHE=str(tmp_path / "kernels"))
    for candidate, code in ((ckpt, 0), (perturbed, 1)):
        out = tmp_path / f"{candidate.stem}.json"
        done = subprocess.run([python_exe, "-m", "parity", "diff", str(pth), str(candidate), "--mode", "train",
                               "--image-size", str(IMAGE_SIZE), "--json", str(out)],
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == code, done.stdout[-3000:] + done.stderr[-2000:]
        report = json.loads(out.read_text())
        expected = None if code == 0 else f"features.{PERTURBED_BLOCK}"
        assert report["first_divergent"] == expected
    assert any((tmp_path / "kernels").iterdir())  # the lower target built a library of its own
