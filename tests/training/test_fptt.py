"""FPTT against values computed by hand from the paper's equations (training/fptt.py)."""

from __future__ import annotations

import pytest
import torch

from spikeseg.training.fptt import FPTT


def _quadratic_setup(w0: float = 1.0, lr: float = 0.5, alpha: float = 0.1):
    w = torch.nn.Parameter(torch.tensor([w0]))
    opt = torch.optim.SGD([w], lr=lr)
    return w, opt, FPTT([w], opt, alpha=alpha)


def _one_update(w: torch.nn.Parameter, fptt: FPTT) -> None:
    fptt.optimizer.zero_grad()
    (0.5 * w.pow(2)).sum().backward()  # l_t(w) = w^2 / 2, gradient w
    fptt.step()


def test_one_and_two_steps_by_hand() -> None:
    """w0 = 1, lr 0.5, alpha 0.1, l(w) = w^2/2.

    step 1: g = w0 + a(w0 - wbar0) - lam0/2 = 1        -> w1 = 0.5
            lam1 = 0 - 0.1 (0.5 - 1) = 0.05
            wbar1 = (1 + 0.5)/2 - 0.05/0.2 = 0.5
    step 2: g = 0.5 + 0.1 (0.5 - 0.5) - 0.05/2 = 0.475 -> w2 = 0.2625
            lam2 = 0.05 - 0.1 (0.2625 - 0.5) = 0.07375
            wbar2 = (0.5 + 0.2625)/2 - 0.07375/0.2 = 0.0125
    """
    w, _, fptt = _quadratic_setup()
    _one_update(w, fptt)
    assert w.item() == pytest.approx(0.5)
    assert fptt.lam[0].item() == pytest.approx(0.05)
    assert fptt.wbar[0].item() == pytest.approx(0.5)
    _one_update(w, fptt)
    assert w.item() == pytest.approx(0.2625)
    assert fptt.lam[0].item() == pytest.approx(0.07375)
    assert fptt.wbar[0].item() == pytest.approx(0.0125)


def test_added_gradient_is_the_gradient_of_R() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fptt = FPTT(model.parameters(), opt, alpha=0.3)
    with torch.no_grad():  # make wbar and lam non-trivial
        for wb, lm in zip(fptt.wbar, fptt.lam):
            wb.add_(torch.randn_like(wb))
            lm.add_(torch.randn_like(lm))
    opt.zero_grad()
    fptt.regulariser().backward()
    autograd = [p.grad.clone() for p in fptt.params]
    opt.zero_grad()
    for p in fptt.params:
        p.grad = torch.zeros_like(p)
    fptt.add_regulariser_grad()
    for a, p in zip(autograd, fptt.params):
        torch.testing.assert_close(p.grad, a)


def test_averaged_weights_are_swapped_in_and_back() -> None:
    w, _, fptt = _quadratic_setup()
    _one_update(w, fptt)
    _one_update(w, fptt)
    with fptt.averaged_weights():
        assert w.item() == pytest.approx(0.0125)
    assert w.item() == pytest.approx(0.2625)


def test_state_dict_round_trip() -> None:
    w, opt, fptt = _quadratic_setup()
    _one_update(w, fptt)
    saved = fptt.state_dict()
    w2, _, fptt2 = _quadratic_setup()
    fptt2.load_state_dict(saved)
    assert fptt2.lam[0].item() == pytest.approx(0.05) and fptt2.wbar[0].item() == pytest.approx(0.5)
