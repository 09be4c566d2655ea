"""Every loss against numbers computed by hand (plain Python maths, no torch functional calls)."""
import math

import pytest
import torch

from pipeline.config import RunConfig
from pipeline.losses import Objective, label_smoothing_table, virtual_teacher_table

S = [[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]]   # student logits, K = 3
T = [[1.0, 2.0, 0.0], [-0.5, 0.5, 3.0]]   # teacher logits
Y = [0, 2]


def softmax(v, t=1.0):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def ce(v, y):
    return -math.log(softmax(v)[y])


def kl(p, q):  # sum p log(p/q)
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def objective(method, k=3, **loss):
    """The Objective of a run with these loss settings (the rest of RunConfig is irrelevant)."""
    return Objective(RunConfig(name="t", role="distill" if method == "kd" else "train", model="resnet18",
                               method=method, **loss), k)


def run(method, **kw):
    obj = objective(method, **kw)
    return obj(torch.tensor(S), torch.tensor(Y), torch.tensor(T)).item()


def test_ce():
    want = (ce(S[0], 0) + ce(S[1], 2)) / 2
    assert run("ce") == pytest.approx(want, rel=1e-6)


def test_label_smoothing_puts_eps_over_k_minus_1_on_wrong_classes():
    eps = 0.1
    assert label_smoothing_table(3, eps)[0].tolist() == pytest.approx([0.9, 0.05, 0.05])
    want = 0
    for s, y in zip(S, Y):
        q = [1 - eps if k == y else eps / 2 for k in range(3)]
        want -= sum(qk * math.log(pk) for qk, pk in zip(q, softmax(s)))
    assert run("lsr", label_smoothing=eps) == pytest.approx(want / 2, rel=1e-6)


@pytest.mark.parametrize("form", ["reference", "paper"])
@pytest.mark.parametrize("mult", [1.0, 50.0])
def test_kd(form, mult):
    a, t = 0.7, 4.0
    hard = (ce(S[0], 0) + ce(S[1], 2)) / 2
    kls = [kl(softmax(tt, t), softmax(ss, t)) for ss, tt in zip(S, T)]
    if form == "reference":  # T^2 * m * KLDivLoss 'mean' = sum / (N*K)
        soft = t * t * mult * sum(kls) / (2 * 3)
    else:  # per-sample KL, no T^2, no multiplier
        soft = sum(kls) / 2
    want = (1 - a) * hard + a * soft
    assert run("kd", alpha=a, temperature=t, multiplier=mult, loss_form=form) == pytest.approx(want, rel=1e-5)


def test_kd_reference_is_per_sample_kl_over_k():
    a, t = 0.95, 20.0
    ref = run("kd", alpha=a, temperature=t, loss_form="reference")
    paper = run("kd", alpha=a, temperature=t, loss_form="paper")
    hard = (1 - a) * (ce(S[0], 0) + ce(S[1], 2)) / 2
    assert (ref - hard) == pytest.approx((paper - hard) * t * t / 3, rel=1e-5)


@pytest.mark.parametrize("form", ["reference", "paper"])
def test_reg_softens_the_virtual_teacher_and_in_paper_form_the_student_too(form):
    a, t, m, cp = 0.1, 20.0, 100.0, 0.99
    hard = (ce(S[0], 0) + ce(S[1], 2)) / 2
    soft = []
    for s, y in zip(S, Y):
        pd = [cp if k == y else (1 - cp) / 2 for k in range(3)]
        q = softmax(pd, t)
        student = softmax(s, 1.0 if form == "reference" else t)
        soft.append(kl(q, student))
    soft = m * sum(soft) / 6 if form == "reference" else sum(soft) / 2
    want = (1 - a) * hard + a * soft
    got = run("reg", alpha=a, temperature=t, multiplier=m, correct_prob=cp, loss_form=form)
    assert got == pytest.approx(want, rel=1e-5)


def test_virtual_teacher_is_almost_uniform_at_cifar100_temperature():
    # the reference code's virtual teacher (Yuan et al.'s Tf-KD reg) puts 0.01050 on the true class at T = 20 with K = 100
    q = virtual_teacher_table(100, 0.99, 20.0)
    assert q[3, 3].item() == pytest.approx(0.01050, abs=5e-6)
    assert q.sum(1).tolist() == pytest.approx([1.0] * 100)


@pytest.mark.parametrize("form", ["reference", "paper"])
def test_kd_gradient_is_the_softened_probability_gap_and_never_reaches_the_teacher(form):
    """d loss / d s = (1-a)(softmax(s) - onehot)/N + a * c * (softmax(s/T) - softmax(t/T)) / T, with
    c = T^2 m / (N K) in the reference form and 1 / N in the paper's; the teacher gets none."""
    a, t, m, n, k = 0.5, 2.0, 3.0, len(S), 3
    s = torch.tensor(S, requires_grad=True)
    teacher = torch.tensor(T, requires_grad=True)  # even a teacher that requires grad is only a target
    objective("kd", alpha=a, temperature=t, multiplier=m, loss_form=form)(s, torch.tensor(Y), teacher).backward()
    c = t * t * m / (n * k) if form == "reference" else 1 / n
    for row, (ss, tt, y) in enumerate(zip(S, T, Y)):
        hard = [(p - (j == y)) / n for j, p in enumerate(softmax(ss))]
        soft = [c * (p - q) / t for p, q in zip(softmax(ss, t), softmax(tt, t))]
        want = [(1 - a) * h + a * g for h, g in zip(hard, soft)]
        assert s.grad[row].tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert teacher.grad is None
