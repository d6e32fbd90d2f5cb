"""Per-adapter steps: Adam's per-entry scaling applied to each generated adapter, not to the shared generator.

Under plain Adam every coordinate of a generator's weight mixes every task's and site's adapter (through their
source vectors), and Adam scales each coordinate by its own running gradient size: an adapter whose gradient is small
moves by steps sized by the others' (``quality-small-fm3-optimizer``: the same orthonormal sources train to 0.913 one
hot and 0.776 rotated). Here the scaling moves to where the tasks are separate:

* the gradient reaching each generated tensor (one task's D, d, U or u at one site) is divided, entry by entry, by
  its own running RMS (Adam's second moment: decay ``betas[1]``, bias-corrected, ``eps``), on its way back into the
  generator;
* the generators then step by that gradient times the learning rate (no second scaling on top), unclipped: their
  gradients are taken out of ``.grad`` as they accumulate, so the trainer's clipping and its reported norm see only
  the other parameters (embeddings, task heads), which the trainer's optimizer (AdamW by default) steps as usual.

With orthonormal sources a generator step then moves each adapter exactly as RMSprop on that adapter alone would;
the ``product`` sources are far less aligned than a shared projector's (mean |cos| 0.16 at width 64, 0.55 for the
projector), not orthogonal, so some of each step still reaches the others. Moments advance once per backward pass
(per micro-batch under gradient accumulation); they are saved with the optimizer's state, so a resumed run continues
them. The watching is on only inside ``trainer.train()`` (:meth:`PerAdapterSteps.watching`): a backward pass outside
it leaves every gradient as autograd made it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import nn

from ftplugins.errors import FtpluginsError

STATE_KEY = "generated_moments"


class PerAdapterSteps:
    """Mixed in before the trainer's optimizer class; the param group flagged ``generated_step`` holds the generator
    weights, which this class steps itself."""

    def __init__(self, params, *, hypernetwork: nn.Module, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.moment_decay = float(self.defaults.get("betas", (0.9, 0.999))[1])
        self.moment_eps = float(self.defaults.get("eps", 1e-8))
        self.hypernetwork = hypernetwork
        self.moments: dict[str, dict[str, Any]] = {}
        self.taken: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _generator_params(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups if group.get("generated_step") for p in group["params"]]

    @contextlib.contextmanager
    def watching(self):
        """Scale generated gradients and take the generators' gradients for the duration (``trainer.train()``)."""
        self._handles = [self.hypernetwork.register_forward_hook(self._watch)]
        self._handles += [p.register_post_accumulate_grad_hook(self._take) for p in self._generator_params()]
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self.taken.clear()  # a last accumulation that no step used (training stopped between micro-batches)

    def _watch(self, module: nn.Module, args: tuple, output: dict[str, dict[str, torch.Tensor]]) -> None:
        if not torch.is_grad_enabled():
            return
        task = int(args[0])
        for site, tensors in output.items():
            for name, tensor in tensors.items():
                if tensor.requires_grad:
                    tensor.register_hook(functools.partial(self._scale, f"{task}/{site}/{name}"))

    def _scale(self, key: str, grad: torch.Tensor) -> torch.Tensor:
        state = self.moments.get(key)
        if state is None:
            state = self.moments[key] = {"square": torch.zeros_like(grad), "count": 0}
        state["square"].mul_(self.moment_decay).addcmul_(grad, grad, value=1 - self.moment_decay)
        state["count"] += 1
        rms = (state["square"] / (1 - self.moment_decay ** state["count"])).sqrt_().add_(self.moment_eps)
        return grad / rms

    def _take(self, param: nn.Parameter) -> None:
        grad, param.grad = param.grad, None
        held = self.taken.get(id(param))
        self.taken[id(param)] = grad if held is None else held + grad

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("generated_step"):
                for param in group["params"]:
                    if param.grad is not None:
                        raise FtpluginsError("hyper_adapter: the per-adapter optimizer stepped a generator whose "
                                             "gradient it did not take: step it inside optimizer.watching() (the "
                                             "trainer's train() does), or use --hyper_adapter_parametrization "
                                             "hyperformer with your own optimizer.")
                    grad = self.taken.pop(id(param), None)
                    if grad is not None:
                        param.sub_(grad, alpha=group["lr"])
        return super().step(closure)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[STATE_KEY] = {key: {"square": moment["square"].clone(), "count": moment["count"]}
                            for key, moment in self.moments.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        moments = state_dict.pop(STATE_KEY, {})
        super().load_state_dict(state_dict)
        device = next(iter(self.hypernetwork.parameters())).device
        self.moments = {key: {"square": moment["square"].to(device), "count": int(moment["count"])}
                        for key, moment in moments.items()}


def build_optimizer(model: nn.Module, args: Any) -> torch.optim.Optimizer:
    """The trainer's own optimizer class and settings (``args.optim``, weight decay on the usual parameters) for the
    embeddings and task heads; the generator weights in a ``generated_step`` group that :class:`PerAdapterSteps`
    steps (no weight decay: the generated adapters are the model's weights, not the generator's coordinates)."""
    from ftplugins.optimizer_groups import grouped_optimizer

    generators = {id(p) for p in model.hypernetwork.generators.parameters()}
    return grouped_optimizer(model, args, lambda _, param: {"generated_step": True, "weight_decay": 0.0}
                             if id(param) in generators else {}, mixin=PerAdapterSteps,
                             hypernetwork=model.hypernetwork)
