"""Diffusion-KTO against an independent transcription of the authors' loss."""

from __future__ import annotations

import functools

import pytest
import torch

from diffusion_align.losses import kto_loss
from diffusion_align.testing.contracts import DPO_FAMILY_KEYS, LossContract


class TestKtoContract(LossContract):
    loss_fn = functools.partial(kto_loss, beta=1000.0)
    differentiable = ("err",)
    metric_keys = DPO_FAMILY_KEYS + ("kto/kl", "kto/desirable_fraction")

    def make_inputs(self, dtype, generator):
        ref = 0.05 + 0.2 * torch.rand(self.batch_size, generator=generator)
        err = ref + 1e-3 * torch.randn(self.batch_size, generator=generator)
        desirable = torch.tensor([True, False] * (self.batch_size // 2))
        return {"err": err.to(dtype), "ref_err": ref.to(dtype), "desirable": desirable}

    def swap_chosen_rejected(self, inputs):
        return {**inputs, "desirable": ~inputs["desirable"]}


def authors_kto(model_mse, ref_mse, labels, beta, lambda_d, lambda_u):
    """train_kto_sd_v1.5.py (halo='sigmoid', loss='kto'), single process."""
    g_term = -model_mse - (-ref_mse)
    kl = g_term.mean().detach().clamp(min=0)
    g_term = g_term - kl
    sign = 2 * labels - 1
    h = torch.sigmoid(sign * beta * g_term)
    w_y = lambda_d * (labels == 1) + lambda_u * (labels != 1)
    return (w_y * (1 - h)).mean()


def test_hand_example():
    out = kto_loss(torch.tensor([0.2, 0.6]), torch.tensor([0.5, 0.5]), torch.tensor([True, False]), beta=1.0)
    torch.testing.assert_close(out.losses, torch.full((2,), 0.450166003))
    assert out.metrics["kto/kl"].item() == pytest.approx(0.1, abs=1e-7)


@pytest.mark.parametrize("lambdas", [(1.0, 1.0), (1.0, 1.5)])
def test_matches_authors_formula(lambdas):
    g = torch.Generator().manual_seed(0)
    ref = 0.1 + 0.1 * torch.rand(12, generator=g)
    err = ref + 1e-3 * torch.randn(12, generator=g)
    desirable = torch.rand(12, generator=g) < 0.6
    out = kto_loss(
        err, ref, desirable, beta=1000.0, lambda_desirable=lambdas[0], lambda_undesirable=lambdas[1]
    )
    expected = authors_kto(err, ref, desirable.float(), 1000.0, *lambdas)
    torch.testing.assert_close(out.loss, expected)


def test_kl_is_clamped_at_zero_and_detached():
    err = torch.tensor([0.6, 0.7], requires_grad=True)
    out = kto_loss(err, torch.tensor([0.5, 0.5]), torch.tensor([True, False]), beta=1.0)
    assert out.metrics["kto/kl"].item() == 0.0
    out.loss.backward()
    h_d, h_u = torch.sigmoid(torch.tensor(-0.1)), torch.sigmoid(torch.tensor(0.2))
    # d/d err of (1 - σ(±β(ref - err))): the KL term contributes nothing (detached).
    torch.testing.assert_close(err.grad, torch.stack([h_d * (1 - h_d), -h_u * (1 - h_u)]) / 2)


def test_lowering_desirable_error_lowers_loss():
    err = torch.tensor([0.50, 0.50], requires_grad=True)
    kto_loss(err, torch.tensor([0.5, 0.5]), torch.tensor([True, False]), beta=10.0).loss.backward()
    assert err.grad[0] > 0 and err.grad[1] < 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="needs 'ref_err'"):
        kto_loss(torch.rand(2), None, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="bool tensor"):
        kto_loss(torch.rand(2), torch.rand(2), torch.tensor([1, 0]))


def _two_process_kl(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: each holds its own batch; writes the KL estimate it got (all-reduced, and not)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ref = torch.tensor([0.5, 0.5])
        err = torch.tensor([0.2, 0.4]) if rank == 0 else torch.tensor([0.6, 0.6])  # g: [0.3, 0.1] and [-0.1, -0.1]
        desirable = torch.tensor([True, False])
        reduced = kto_loss(err, ref, desirable, beta=1.0).metrics["kto/kl"]
        local = kto_loss(err, ref, desirable, beta=1.0, kl_all_reduce=False).metrics["kto/kl"]
        torch.save({"reduced": reduced, "local": local}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_kl_estimate_is_all_reduced_over_processes(tmp_path):
    """The authors all-reduce the batch mean of g: rank 0's mean 0.2 and rank 1's -0.1 give 0.05 on both ranks
    (clamped after averaging); without the all-reduce rank 0 keeps 0.2 and rank 1 clamps to 0."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_process_kl, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert [float(g["reduced"]) for g in got] == pytest.approx([0.05, 0.05])
    assert [float(g["local"]) for g in got] == pytest.approx([0.2, 0.0])
