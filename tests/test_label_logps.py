"""The fused output layer + log-softmax (llmkit.label_logps) computes what
`-cross_entropy(head(hidden))` computes: values and gradients in fp32, and in bf16 no further
from the exact figure than the plain path, confident tokens included (1 - p_t near 0)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.label_logps import BLOCK, label_logps

ROWS, WIDTH, VOCAB = 3 * BLOCK + 5, 48, 3000  # several blocks and a partial one


def _case(confident: int = 0):
    torch.manual_seed(0)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False).requires_grad_(False)
    head.weight.mul_(4)
    hidden = torch.randn(ROWS, WIDTH)
    targets = torch.randint(0, VOCAB, (ROWS,))
    if confident:  # the model's own top token, sharpened: p_t close to 1
        hidden[:confident] *= 8
        targets[:confident] = head(hidden[:confident]).argmax(-1)
    return head, hidden, targets, torch.randn(ROWS)


def _plain(head, hidden, targets):
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _values_and_grad(fn, head, hidden, targets, weights, bf16: bool):
    x = hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        values = fn(head, x, targets)
        (grad,) = torch.autograd.grad((values * weights).sum(), x)
    return values.detach(), grad


def test_fp32_values_and_gradients_equal_cross_entropy():
    head, hidden, targets, w = _case(confident=BLOCK)
    got, got_g = _values_and_grad(label_logps, head, hidden, targets, w, bf16=False)
    want, want_g = _values_and_grad(_plain, head, hidden, targets, w, bf16=False)
    assert got.dtype == torch.float32 and got.shape == (ROWS,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got_g - want_g).norm() <= 1e-5 * want_g.norm()
    assert got[:BLOCK].exp().median() > 0.8  # the confident rows are confident


def test_bf16_no_further_from_exact_than_the_plain_path():
    """Against fp64 arithmetic on the same bf16 logits, row by row: computing 1 - p_t from a
    bf16 probability would put the confident rows' gradients percents off."""
    head, hidden, targets, w = _case(confident=2 * BLOCK)
    hb = hidden.bfloat16().double().requires_grad_()
    wb = head.weight.bfloat16().double()
    logits = (hb @ wb.t()).bfloat16().double()  # what the bf16 matmul gives, then exact
    exact = -F.cross_entropy(logits, targets, reduction="none")
    (g_logits,) = torch.autograd.grad((exact * w).sum(), logits)
    exact_g = g_logits @ wb

    def error(g, rows):  # the median row's relative error (a row whose gradient is ~0 is noise)
        return ((g.double() - exact_g).norm(dim=1) / exact_g.norm(dim=1))[rows].median().item()

    got, got_g = _values_and_grad(label_logps, head, hidden, targets, w, bf16=True)
    _, plain_g = _values_and_grad(_plain, head, hidden, targets, w, bf16=True)
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=1e-4)
    for rows in (slice(None), slice(0, 2 * BLOCK)):  # all rows; the confident ones
        assert error(got_g, rows) <= 1.5 * error(plain_g, rows), (error(got_g, rows), error(plain_g, rows))


def test_without_gradients_nothing_is_kept_and_values_agree():
    head, hidden, targets, _ = _case()
    with torch.no_grad():
        got = label_logps(head, hidden, targets)
    torch.testing.assert_close(got, _plain(head, hidden, targets), rtol=1e-5, atol=1e-5)
    assert got.grad_fn is None


def test_backward_twice_is_refused_and_a_trained_head_takes_the_plain_path():
    head, hidden, targets, _ = _case()
    x = hidden.clone().requires_grad_()
    out = label_logps(head, x, targets).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward twice"):
        out.backward()
    head.requires_grad_(True)  # a trained output layer needs its own gradient: the plain path
    values = label_logps(head, hidden, targets)
    values.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
