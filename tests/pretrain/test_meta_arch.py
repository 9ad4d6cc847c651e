"""Student/teacher: the teacher gets no gradient and moves only by the EMA."""

import torch

from bids_semantoks.model import Encoder, ProjectionHead, model_preset
from bids_semantoks.pretrain.losses import coding_rate_loss, masked_token_loss
from bids_semantoks.pretrain.meta_arch import SelfDistillation, ema_update, param_groups

from pretrain_helpers import CHANNEL_NETWORKS, NETWORKS


def _model():
    torch.manual_seed(0)
    cfg = model_preset("tiny", NETWORKS, CHANNEL_NETWORKS).model_copy(update={"dim": 32, "depth": 1, "heads": 2})
    return SelfDistillation(Encoder(cfg), ProjectionHead(32, 64, 16))


def test_teacher_receives_no_gradient():
    m = _model()
    x = torch.randn(6, len(CHANNEL_NETWORKS), 100)
    mask = torch.zeros(6, 3, 5, dtype=torch.bool)
    mask[:, 1] = True
    s = m.student(x, mask, tokens=True, ttr=True)
    t = m.teacher(x, None, tokens=True, ttr=True)  # no torch.no_grad on purpose
    loss = coding_rate_loss(s["cls"].view(2, 3, -1), t["cls"].view(2, 3, -1))[0]
    loss = loss + masked_token_loss(s["tokens"], t["tokens"], mask.view(6, -1))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.student.parameters())  # mask embedding used here
    assert s["tokens"].shape == (6, 15, 16) and s["ttr"].shape == (6, 3, 16)


def test_ema_update_formula():
    m = _model()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.teacher.parameters()]
    ema_update(m.teacher, m.student, 0.9)
    for b, t, s in zip(before, m.teacher.parameters(), m.student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    ema_update(m.teacher, m.student, 1.0)  # momentum 1 (end of training): frozen
    ema_update(m.teacher, m.student, 0.0)  # momentum 0: copy
    for t, s in zip(m.teacher.parameters(), m.student.parameters()):
        torch.testing.assert_close(t, s)


def test_param_groups_no_decay_on_norms_biases_tokens():
    m = _model()
    decay, no_decay = param_groups(m.student)
    names = {id(p): n for n, p in m.student.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert "encoder.mask_token" in no and "encoder.cls_token" in no and "encoder.network_embed" in no
    assert all(not n.endswith(".bias") for n in yes)
    assert "head.fc1.weight" in yes and any("qkv.weight" in n for n in yes)


def test_ema_foreach_equals_plain_loop_bitwise():
    a, b = _model(), _model()
    with torch.no_grad():
        for p in list(a.student.parameters()) + list(b.student.parameters()):
            p.add_(torch.linspace(-1, 1, p.numel()).view_as(p))
    for m in (0.9, 0.996, 0.99999):
        a.update_teacher(m, foreach=True)
        b.update_teacher(m, foreach=False)
    for ta, tb in zip(a.teacher.parameters(), b.teacher.parameters()):
        assert torch.equal(ta, tb)
    assert not torch.equal(next(a.teacher.parameters()), next(_model().teacher.parameters()))  # it moved


def test_forward_backward_returns_the_loss_dict():
    from bids_semantoks.pretrain.meta_arch import LOSS_TERMS

    m = _model()
    x = torch.randn(6, len(CHANNEL_NETWORKS), 100)
    kw = dict(n_views=2, coding_rate_eps=0.05, tok_loss_weight=0.5)
    losses, t_out = m.forward_backward(x, None, ttr_weight=0.0, **kw)  # unmasked, no TTR: only L_cls
    assert tuple(losses) == LOSS_TERMS
    assert torch.equal(losses["loss"], losses["loss_cls"])
    assert all(torch.isnan(losses[k]) for k in ("loss_tok", "loss_ttr", "ttr_alignment", "ttr_rate"))
    assert m.student.encoder.mask_token.grad is None  # unused on unmasked steps
    assert all(p.grad is None for p in m.teacher.parameters()) and t_out["cls"].shape == (6, 16)
    m.zero_grad(set_to_none=True)
    mask = torch.zeros(6, 3, 5, dtype=torch.bool)
    mask[:, 0] = True
    losses, _ = m.forward_backward(x, mask, ttr_weight=0.25, **kw)
    expected = losses["loss_cls"] + 0.5 * losses["loss_tok"] + 0.25 * losses["loss_ttr"]
    torch.testing.assert_close(losses["loss"].detach(), expected)
    assert m.student.encoder.mask_token.grad is not None


def test_compiled_losses_trace_once_and_agree():
    """``compile_step`` (traced with the eager backend: no compiler needed) gives the eager losses,
    and a new TTR weight every step does not recompile."""
    import torch._dynamo as dynamo

    kw = dict(n_views=2, coding_rate_eps=0.05, tok_loss_weight=0.5)
    x = torch.randn(6, len(CHANNEL_NETWORKS), 100)
    mask = torch.zeros(6, 3, 5, dtype=torch.bool)
    mask[:, 2] = True
    eager, compiled = _model(), _model()
    dynamo.reset()
    compiled.compile_step(backend="eager")
    for i, w in enumerate((0.3, 0.2, 0.1)):
        with dynamo.config.patch(error_on_recompile=i > 0):
            got, _ = compiled.forward_backward(x, mask, ttr_weight=w, **kw)
        want, _ = eager.forward_backward(x, mask, ttr_weight=w, **kw)
        for k in want:
            torch.testing.assert_close(got[k].detach(), want[k].detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled.student.parameters(), eager.student.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    dynamo.reset()
