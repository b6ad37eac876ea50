"""The proximal step length: how far the base optimizer steps per unit of gradient.

FOBOS shrinks by ``step * lam`` where ``step`` is the length of the gradient step it follows.
For SGD that is the learning rate. Adaptive optimizers divide the gradient by a running scale
of their own (Adam's ``sqrt(v) + eps``, Adadelta's ratio of two running averages), so their
``lr`` says little about the step actually taken: Adadelta at lr 1.0 moves a weight by about
1e-3, and a prox step of ``1.0 * lam`` is then a thousand times too strong.

**The rule.** The step length is the step the base optimizer takes per unit of gradient *with its
momentum switched off*, computed from the optimizer's own state after its step. With one scale
per scalar that would be one step length per scalar, and the group-lasso map has no closed form
in such a metric. So each neuron gets the step length of the *block* version of the optimizer:
the same formula with every running average replaced by its mean over the neuron's scalars
(Adam: ``lr / (sqrt(mean v_hat) + eps)``). In that per-neuron metric the scalar-step group-lasso
map is the exact proximal step, and a neuron is at rest at zero when its gradient norm is at
most ``lam * c``, the same condition as under plain SGD, whatever the gradient's scale. A mean,
not a per-scalar average of step lengths: scalars with no gradient (weights from a dead input)
have ``v = 0`` and a step length of ``lr / eps``, which would swamp any average of lengths.
Penalties other than group lasso take one step per group (a nuclear norm has no per-neuron
step), from the running averages' mean over the whole group.

**Heavy-ball momentum counts.** SGD's and RMSprop's momentum ``mu`` (with SGD's dampening
``d``) move a weight ``(1 - d) / (1 - mu)`` times as far per step, under a persistent gradient,
as the step without it, so that factor multiplies their length: SGD at lr 0.05 and momentum 0.9
shrinks by 0.5 per unit of lam. A neuron then stays live when its gradient norm beats
``lam * c`` under SGD exactly as under Adam, whose first moment is a normalised average (no
such factor). Revival is symmetric too: a dead neuron's momentum is zeroed, so its first step
back is the bare ``lr * g`` against a threshold ``1 / (1 - mu)`` times longer, as Adam's first
step back is ``(1 - beta1) * g / sqrt(v_hat)``.

**Refused optimizers** are those whose step has no per-unit-gradient length to read: LBFGS
(a closure-driven line search), SparseAdam (sparse gradients only), Rprop (the sign of the
gradient, not its size), Adafactor (factored second moments), Muon (orthogonalised matrix
updates), and NAdam, RAdam, ASGD, which are not modelled. The class must match exactly: a
subclass may change the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from compactcnn.errors import CompactCNNError
from compactcnn.sparsity.neurons import NeuronGroup, Slice

State = dict[str, Any]
Hyper = dict[str, Any]


@dataclass(frozen=True)
class StepRule:
    """What one optimizer class needs: its running averages, its step length, its momentum.

    ``averages(state, hyper)`` returns the parameter-shaped running averages (bias-corrected
    where the optimizer corrects them); ``length(hyper, state, means)`` the step length from
    their means. A rule without averages (SGD) has a plain float step length, ``hyper["lr"]``.
    ``momentum`` names the state buffers that carry momentum: zeroed when a neuron dies.
    ``heavy_ball`` says the optimizer adds ``hyper["momentum"]`` times its last step to each
    step, which lengthens the step under a persistent gradient (see the module's docstring).
    """

    momentum: tuple[str, ...]
    averages: Callable[[State, Hyper], list[Tensor]] | None = None
    length: Callable[[Hyper, State, list[Tensor]], Tensor] | None = None
    heavy_ball: bool = False  # hyper["momentum"] multiplies the length by 1 / (1 - momentum)


def _adam_averages(state: State, hyper: Hyper) -> list[Tensor]:
    v = state["max_exp_avg_sq" if hyper["amsgrad"] else "exp_avg_sq"]
    return [v / (1 - hyper["betas"][1] ** _step(state))]


def _adam_length(hyper: Hyper, state: State, means: list[Tensor]) -> Tensor:
    return float(hyper["lr"]) / (means[0].sqrt() + hyper["eps"])


def _rmsprop_averages(state: State, hyper: Hyper) -> list[Tensor]:
    if hyper["centered"]:
        return [state["square_avg"] - state["grad_avg"].square()]
    return [state["square_avg"]]


def _adadelta_length(hyper: Hyper, state: State, means: list[Tensor]) -> Tensor:
    square_avg, acc_delta = means
    return float(hyper["lr"]) * (acc_delta + hyper["eps"]).sqrt() / (
        square_avg + hyper["eps"]).sqrt()


def _adagrad_length(hyper: Hyper, state: State, means: list[Tensor]) -> Tensor:
    lr = float(hyper["lr"]) / (1 + (_step(state) - 1) * hyper["lr_decay"])
    return lr / (means[0].sqrt() + hyper["eps"])


def _step(state: State) -> float:
    return float(state["step"])


RULES: dict[type[Optimizer], StepRule] = {
    torch.optim.SGD: StepRule(("momentum_buffer",), heavy_ball=True),
    torch.optim.Adam: StepRule(("exp_avg",), _adam_averages, _adam_length),
    torch.optim.AdamW: StepRule(("exp_avg",), _adam_averages, _adam_length),
    torch.optim.Adamax: StepRule(
        ("exp_avg",), lambda state, hyper: [state["exp_inf"]],
        lambda hyper, state, means: float(hyper["lr"]) / means[0]),
    torch.optim.RMSprop: StepRule(("momentum_buffer",), _rmsprop_averages, _adam_length,
                                  heavy_ball=True),
    torch.optim.Adadelta: StepRule(
        (), lambda state, hyper: [state["square_avg"], state["acc_delta"]], _adadelta_length),
    torch.optim.Adagrad: StepRule((), lambda state, hyper: [state["sum"]], _adagrad_length),
}


def rule_for(base: Optimizer) -> StepRule:
    """The rule of ``base``'s class, or a CompactCNNError naming the class and the choices."""
    rule = RULES.get(type(base))
    if rule is None:
        names = ", ".join(cls.__name__ for cls in RULES)
        raise CompactCNNError(
            f"ProximalOptimizer cannot derive a proximal step length from "
            f"{type(base).__name__}; supported base optimizers: {names}")
    return rule


def step_length(rule: StepRule, group: NeuronGroup, hyper: Hyper, states: dict[Tensor, State],
                *, per_neuron: bool) -> float | Tensor:
    """The step length of ``group`` (``[neurons]`` with ``per_neuron``, else one for the group).

    ``hyper`` is the param group of the group's first parameter, read at every step so that LR
    schedules carry over. Slices whose parameter has no state yet (the base optimizer has not
    stepped it) are left out; a group none of whose parameters has state gets length 0, since
    the base optimizer did not move it either.
    """
    gain = heavy_ball_gain(hyper) if rule.heavy_ball else 1.0
    if rule.averages is None or rule.length is None:
        return float(hyper["lr"]) * gain
    stepped = [(s, states[s.param]) for s in group.slices if states.get(s.param)]
    if not stepped:
        return torch.zeros(group.size, device=group.device) if per_neuron else 0.0
    sums = [sum(columns) for columns in zip(
        *([_rows(s, average, group.size).sum(dim=1) for average in rule.averages(state, hyper)]
          for s, state in stepped), strict=True)]
    width = sum(s.per_neuron for s, _ in stepped)
    means = [total / width for total in sums]
    if not per_neuron:
        means = [m.mean(dim=0, keepdim=True) for m in means]
    length = rule.length(hyper, stepped[0][1], means).clamp(min=0) * gain
    return length if per_neuron else float(length)


def heavy_ball_gain(hyper: Hyper) -> float:
    """How many times farther than one step heavy-ball momentum carries a persistent gradient:
    ``(1 - dampening) / (1 - momentum)``, or 1 without momentum."""
    momentum = float(hyper.get("momentum", 0.0))
    if momentum <= 0:
        return 1.0
    return (1 - float(hyper.get("dampening", 0.0))) / (1 - momentum)


def _rows(s: Slice, tensor: Tensor, neurons: int) -> Tensor:
    """``tensor`` (shaped like ``s.param``) as the neuron-major matrix ``s.rows()`` would give."""
    if s.index is not None:
        tensor = tensor.index_select(s.dim, s.index.reshape(-1))
    return tensor.movedim(s.dim, 0).reshape(neurons, -1)
