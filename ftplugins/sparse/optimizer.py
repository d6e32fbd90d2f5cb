"""``SparseAdamW``: AdamW whose state exists only for the selected entries of each weight.

How a step works, and why:

* **Gradients.** Every managed parameter gets a ``register_post_accumulate_grad_hook``. As soon as
  autograd has written a tensor's dense gradient, the hook gathers the selected entries into a
  compact fp32 buffer (adding to it across gradient-accumulation micro-batches) and sets
  ``param.grad = None``. So at most one dense gradient is alive at a time (the one autograd is
  writing), never the model's worth that the LIFT reference keeps (it masks a dense ``.grad``).
* **State.** Per parameter: the sorted flat ``indices`` (``int32`` below 2**31 entries, else ``int64``;
  absent for a dense parameter),
  ``exp_avg`` / ``exp_avg_sq`` of length k (fp32), an fp32 ``master`` copy of the k values when the
  weight is bf16/fp16 (the weight receives their rounded copy), and with ``track_origin`` the
  weight's values before training at every entry ever selected (``origin_indices`` /
  ``origin_values``, for the sparse delta and for L1 toward θ0). ``step`` counts updates.
* **Update.** :func:`ftplugins.kernels.sparse_adamw_multi.sparse_adamw_multi_` for every tensor of the step
  (one multi-tensor Triton launch on CUDA; :func:`ftplugins.kernels.sparse_adamw.sparse_adamw_` per tensor
  inside the backward): AdamW on the compact values, scattered into the weight in place. Decoupled weight
  decay multiplies the *selected* entries only; the LIFT reference decays a temporary copy (a no-op).
* **Update inside the backward** (``step_in_backward=True``, opt-in). Each weight is updated as soon as
  its gradient arrives (the hook, or a routed ``Linear``'s backward), from a scratch buffer, so no
  compact gradient outlives its tensor: 4 bytes per trained entry less (the persistent compact
  buffers), the "per-parameter step in a post-accumulate-grad hook" of LOMO-style trainers. The
  price: no clipping by the global norm, no gradient accumulation, no L1 / regulariser terms over all
  gradients, one process or FSDP2 (there FSDP runs the hook on each process's reduce-scattered, already
  averaged rows; under DDP a gradient is the process's own until :meth:`step` averages it, so it is refused), and
  each weight used once per forward (a second gradient before :meth:`step` is refused by name). Same result as the
  default path when none of those is used.
* **Clipping.** With ``max_grad_norm`` the compact gradients are clipped by their global norm
  inside :meth:`step` (the Trainer clips dense ``.grad``, which is ``None`` here; the ``grad_norm``
  hook of :mod:`ftplugins.sparse.trainer` makes the Trainer log this norm).
* **DDP.** The compact gradients are averaged over the processes with one ``all_reduce`` per
  optimizer step (before clipping), i.e. what DDP does to dense gradients, on k entries instead of
  the model. The model must therefore not be wrapped in DDP (whose reducer would see no gradient
  and whose buckets would hold a dense copy); the Trainer mixin sees to that. Selections are
  broadcast from rank 0, so every process trains the same entries.
* **FSDP2.** A parameter FSDP2 sharded by rows (a ``DTensor``) keeps state for the selected entries of this
  process's rows only; its gradient is read from the reduce-scattered shard at the step (no second all-reduce)
  and the norm sums squares over processes; selections are made on the gathered whole tensor
  (:mod:`ftplugins.sparse.shards`).
* **Refresh.** With ``refresh_interval = N`` the rule is re-applied to the current weights after
  every N-th step. Moments (and master values) carry over for entries that stay selected; new
  entries start with zero moments; entries that leave keep their trained value, frozen.
* **Checkpoints.** ``state_dict()`` holds everything above plus the step counter, as tensors and
  ints (``torch.load(weights_only=True)`` reads it); :meth:`load_state_dict` restores it exactly,
  without the dtype casting ``torch.optim.Optimizer`` applies (which would turn int64 indices into
  the weight's dtype). A resumed run ends where the uninterrupted one does.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ftplugins.kernels.sparse_adamw import sparse_adamw_
from ftplugins.kernels.sparse_adamw_multi import SparseAdamWTensor, sparse_adamw_multi_

from .heap import release_freed_memory
from .selection import SelectionRule, as_indices
from .shards import adopt_shards, full_weights, is_sharded, local, localize, row_range

STATE_FORMAT = 1
#: Why an update inside the backward needs one process or FSDP2 (said by the optimizer and the plugins' checks).
STEP_IN_BACKWARD_DDP = (
    "updating inside the backward needs each gradient already averaged over the processes when it arrives: under "
    "FSDP2 it is (the hook runs on the reduce-scattered shard of each process's rows), but a replicated parameter "
    "(DDP, or one FSDP2 did not shard) gets this process's gradient only, whose average the engine makes at "
    "optimizer.step(), after the backward; use FSDP2 or step_in_backward=False.")
_LOW_PRECISION = (torch.bfloat16, torch.float16)


class SparseAdamW(torch.optim.Optimizer):
    """AdamW over the selected entries of each parameter.

    Args:
        params: ``(name, parameter)`` pairs (e.g. a filtered ``model.named_parameters()``), or
            param-group dicts whose ``"params"`` are such pairs (torch's named-parameter format).
        selection: a selection rule ``{name: weight} -> {name: bool mask | flat indices | None}``
            (``None`` trains every entry), or such a mapping given directly.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled decay, selected entries only).
        max_grad_norm: clip the compact gradients by their global L2 norm before the update.
        l1: coefficient of an L1 pull toward the original values, added to each selected entry's
            gradient as ``l1 * sign(θ - θ0)`` (LT-SFT's λ / N); needs ``track_origin`` (implied).
        refresh_interval: re-select from the current weights after every this many steps (0: never);
            ``selection`` must then be a rule.
        track_origin: keep the original values of every entry ever selected, so that
            :func:`ftplugins.sparse.delta.delta_from_optimizer` can write ``W - W0``.
        distributed: average compact gradients over ``torch.distributed``'s default group; ``None``
            (default) does so when a process group with more than one process is initialised.
        grad_terms: callables ``term(optimizer)`` run once per step after the DDP average and the L1
            term, before clipping; each adds a regulariser's gradient to the compact gradients with
            :meth:`add_to_grad` (SaRA's nuclear-norm term). They see the same averaged gradients
            and weights on every process, so they must be deterministic (seed from :attr:`steps`).
        step_in_backward: update each weight during the backward, as its gradient arrives (see above).
    """

    def __init__(
        self,
        params: Iterable[Any],
        selection: SelectionRule | Mapping[str, torch.Tensor | None],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
        l1: float = 0.0,
        refresh_interval: int = 0,
        track_origin: bool = False,
        distributed: bool | None = None,
        grad_terms: Iterable[Any] = (),
        step_in_backward: bool = False,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or l1 < 0:
            raise ValueError(f"SparseAdamW: lr, eps, weight_decay and l1 must be >= 0 "
                             f"(got {lr}, {eps}, {weight_decay}, {l1})")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"SparseAdamW: betas must be in [0, 1), got {betas}")
        if refresh_interval < 0:
            raise ValueError(f"SparseAdamW: refresh_interval must be >= 0, got {refresh_interval}")
        if refresh_interval and not callable(selection):
            raise ValueError("SparseAdamW: refresh_interval > 0 needs a selection rule (a callable), not fixed indices")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, l1=l1)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if "param_names" not in group:
                raise ValueError("SparseAdamW needs named parameters: pass (name, parameter) pairs, "
                                 "e.g. [(n, p) for n, p in model.named_parameters() if p.requires_grad]")
        self.selection = selection
        self.max_grad_norm = max_grad_norm
        self.refresh_interval = int(refresh_interval)
        self.track_origin = bool(track_origin or l1 > 0)
        self.distributed = distributed
        self.grad_terms = list(grad_terms)
        self.step_in_backward = bool(step_in_backward)
        if self.step_in_backward and ((max_grad_norm or 0) > 0 or l1 > 0 or self.grad_terms):
            raise ValueError("SparseAdamW(step_in_backward=True) updates each weight as its gradient arrives, so it "
                             "cannot clip by the global norm, add an L1 term or regularisers over all gradients: "
                             "set max_grad_norm=None (Trainer: --max_grad_norm 0), l1=0 and no grad_terms")
        self.steps = 0
        self._grads: dict[nn.Parameter, torch.Tensor] = {}  # this step's compact gradients
        self._grad_buffers: dict[nn.Parameter, torch.Tensor] = {}  # their storage, kept across steps
        self._workspaces: dict[tuple[torch.dtype, torch.device, bool], torch.Tensor] = {}  # products; scratch
        self._reduced = False
        self._norm: torch.Tensor | None = None
        self._stepped: set[nn.Parameter] = set()  # step_in_backward: updated during this step's backward
        self._stepped_sq = torch.zeros(())  # ... and the sum of squares of their gradients (for logging)
        self._last_norm = torch.zeros(())
        self.late_grads = 0  # step_in_backward under FSDP2: shard gradients stepped at the step, not in the backward
        self._keep_loaded = False  # FSDP2 resume: the state came from this process's own file (sparse/resume.py)
        for name, param in self.named_params():
            if not param.is_floating_point():
                raise ValueError(f"SparseAdamW: parameter {name} has dtype {param.dtype}; only float weights train")
            if not param.is_contiguous():
                raise ValueError(f"SparseAdamW: parameter {name} is not contiguous; call .contiguous() on the model")
        self._sharded = any(is_sharded(param) for _, param in self.named_params())
        selected = self._select()
        for name, param in self.named_params():
            self.state[param] = self._fresh_state(param, selected[name])
            if not is_sharded(param) or self.step_in_backward:  # FSDP2 writes a shard's gradient: read in _reduce
                _own_grad_hook(param, self)

    # --- parameters and selection ----------------------------------------------------------------

    def named_params(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` over every group, in order."""
        return [pair for group in self.param_groups for pair in zip(group["param_names"], group["params"])]

    def _select(self, local_selection: bool = False) -> dict[str, torch.Tensor | None]:
        named = self.named_params()
        if callable(self.selection):
            with torch.no_grad():
                raw = self.selection(full_weights(named))
        else:
            raw = self.selection
        names = [name for name, _ in named]
        missing = [n for n in names if n not in raw]
        unknown = [n for n in raw if n not in set(names)]
        if missing or unknown:
            raise ValueError(f"SparseAdamW selection does not match the parameters: missing {missing[:3]}, "
                             f"unknown {unknown[:3]}")
        out = {}
        for name, param in named:
            if local_selection and is_sharded(param):  # this process's rows, chosen by it
                shard = local(param)
                indices = as_indices(raw[name], shard.shape, name)
                out[name] = None if indices is None or indices.numel() == shard.numel() else compact_indices(
                    indices.to(shard.device), max(shard.numel(), 1))
                continue
            indices = as_indices(raw[name], param.shape, name)
            if param.device.type == "cpu":
                release_freed_memory()  # the rule's temporaries for this tensor: see ftplugins.sparse.heap
            if indices is not None and indices.numel() == param.numel():
                indices = None  # every entry: dense state, no index list (8 bytes an entry saved)
            # Compacted at once: a model's worth of int64 lists would outweigh the int32 ones kept.
            out[name] = None if indices is None else compact_indices(indices.to(param.device), param.numel())
            if is_sharded(param):  # this process's rows only (FSDP2), re-based to its shard
                out[name] = self._local_selection(name, param, out[name])
        replicated = {name: out[name] for name, param in named if not is_sharded(param)}
        if self._world_size() > 1 and replicated:
            out.update(self._broadcast_selection(replicated))
        return out

    def _local_selection(self, name: str, param: nn.Parameter, indices: torch.Tensor | None) -> torch.Tensor | None:
        """``indices`` of the whole ``param`` cut to this process's rows (every process selected the same:
        rank 0's choice is broadcast first, as under DDP)."""
        start, end, cols = row_range(param, name)
        if self._world_size() > 1:
            indices = self._broadcast_selection({name: indices}, {name: param.numel()})[name]
        if indices is None:
            return None
        _, _, kept = localize(indices, start, end, cols)
        numel = local(param).numel()
        return None if kept.numel() == numel else compact_indices(kept.contiguous(), max(numel, 1))

    def _fresh_state(self, param: nn.Parameter, indices: torch.Tensor | None) -> dict[str, Any]:
        k = local(param).numel() if indices is None else indices.numel()
        dtype = _moment_dtype(param)
        state: dict[str, Any] = {"step": 0}
        if indices is not None:
            state["indices"] = indices
        state["exp_avg"] = torch.zeros(k, dtype=dtype, device=param.device)
        state["exp_avg_sq"] = torch.zeros(k, dtype=dtype, device=param.device)
        if param.dtype in _LOW_PRECISION:
            state["master"] = _gather(param, indices).to(torch.float32)
        if self.track_origin:
            state["origin_indices"] = indices  # the same tensor: saved once, costs nothing until a refresh
            state["origin_values"] = _gather(param, indices).clone()
        return state

    def _adopt(self) -> None:
        """Follow FSDP2's swap of the parameters for their shards (see :mod:`ftplugins.sparse.shards`)."""
        self._sharded = adopt_shards(self)

    def sharded(self) -> bool:
        """Whether FSDP2 sharded the parameters (each process then holds the state of its rows)."""
        self._adopt()
        return self._sharded

    def selected_numel(self) -> int:
        """Σk: the number of trained entries over all parameters (this process's rows under FSDP2)."""
        self._adopt()
        return sum(state["exp_avg"].numel() for state in self.state.values())

    def state_nbytes(self) -> int:
        """Bytes of persistent optimizer state (shared tensors counted once)."""
        self._adopt()
        seen, total = set(), 0
        for state in self.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    total += value.numel() * value.element_size()
        return total

    # --- gradients -----------------------------------------------------------------------------

    def _accumulate(self, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: move the selected gradient entries into the compact buffer."""
        grad = param.grad
        if grad is None:
            return
        if is_sharded(param):  # FSDP2 runs the hook on its reduce-scattered shard (step_in_backward)
            grad = grad.to_local()
        if grad.is_sparse:
            raise RuntimeError("SparseAdamW does not take sparse (torch.sparse) gradients; use sparse=False embeddings")
        self._add_dense_grad(param, grad.reshape(-1))
        param.grad = None

    def _add_dense_grad(self, param: nn.Parameter, flat: torch.Tensor) -> None:
        """Add the selected entries of ``flat`` (a dense gradient of ``param``) to its compact gradient."""
        indices = self.state[param].get("indices")
        if self.step_in_backward and indices is None and flat.dtype == torch.float32:
            self._check_step_now(param)
            self._step_now(param, flat)  # a dense parameter's gradient is already compact
            return
        slot, accumulate = self.compact_grad_slot(param)
        if accumulate:
            slot.add_(flat if indices is None else flat.index_select(0, indices))
        elif indices is None:
            slot.copy_(flat)
        elif flat.dtype == slot.dtype:
            torch.index_select(flat, 0, indices, out=slot)
        else:
            slot.copy_(flat.index_select(0, indices))
        self.compact_grad_written(param, slot)

    def compact_grad_slot(self, param: nn.Parameter) -> tuple[torch.Tensor, bool]:
        """Where this backward's compact gradient of ``param`` goes (one fp32 value per selected entry), and
        whether to add to it (a later micro-batch) rather than overwrite it; then :meth:`compact_grad_written`.

        The first micro-batch writes into the parameter's persistent buffer (allocating compact buffers during
        backward, between autograd's dense gradients, fragments the heap); with ``step_in_backward`` a scratch
        buffer shared by all parameters is used and the update follows at once."""
        if self.step_in_backward:
            self._check_step_now(param)
            k = self.state[param]["exp_avg"].numel()
            return self._workspace(k, torch.float32, param.device, scratch=True), False
        buffer = self._grads.get(param)
        return (self._grad_buffer(param), False) if buffer is None else (buffer, True)

    def compact_grad_written(self, param: nn.Parameter, slot: torch.Tensor) -> None:
        if self.step_in_backward:
            self._step_now(param, slot)
            return
        self._grads[param] = slot
        self._reduced, self._norm = False, None

    def _check_step_now(self, param: nn.Parameter) -> None:
        if param in self._stepped:
            name = next(n for n, p in self.named_params() if p is param)
            raise RuntimeError(
                f"SparseAdamW(step_in_backward=True): a second gradient reached {name} before optimizer.step(); "
                "updating inside the backward needs gradient_accumulation_steps=1 and each trained weight used once "
                "per forward (not tied to another use). Use one of those, or step_in_backward=False."
            )
        if self._world_size() > 1 and not is_sharded(param):
            raise RuntimeError(STEP_IN_BACKWARD_DDP)

    def _step_now(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        """``step_in_backward``: this step's update of ``param`` from its compact gradient, at once."""
        with torch.no_grad():
            self._stepped_sq = self._stepped_sq.to(grad.device) + grad.pow(2).sum()
            self._update(param, self._group_of(param), grad, scale=1.0)
        self._stepped.add(param)
        self._norm = None

    def _step_pending_shards(self) -> None:
        """``step_in_backward`` under FSDP2: step the shards whose gradient FSDP wrote before the engine had hooked
        them (the first backward: Accelerate swaps in the sharded parameters after the optimizer is built)."""
        self._adopt()
        if self._sharded:
            for _, param in self.named_params():
                if is_sharded(param) and param.grad is not None:
                    self.late_grads += 1
                    self._accumulate(param)

    def _group_of(self, param: nn.Parameter) -> dict[str, Any]:
        return next(group for group in self.param_groups if any(p is param for p in group["params"]))

    # --- compact gradients of routed nn.Linear layers (ftplugins.sparse.linear_grad) ---------------

    def trains(self, param: torch.Tensor) -> bool:
        """Whether ``param`` is one of this optimizer's parameters."""
        return param in self.state

    def trained_params(self) -> list[nn.Parameter]:
        return [param for _, param in self.named_params()]

    def add_linear_grad(self, weight: nn.Parameter, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        """Add ``grad_outᵀ @ inputs`` (the weight gradient of a ``Linear``; 2-D operands) to ``weight``'s
        compact gradient without a fresh dense tensor (see :func:`ftplugins.sparse.linear_grad.add_product`)."""
        from .linear_grad import add_product

        add_product(self, weight, grad_out, inputs)

    def _workspace(self, numel: int, dtype: torch.dtype, device: torch.device, scratch: bool = False) -> torch.Tensor:
        """A reused buffer of at least ``numel``: the dense products of routed layers, or (``scratch``) the
        compact gradient of the tensor being updated inside the backward (sized for the largest selection)."""
        key = (dtype, device, scratch)
        buffer = self._workspaces.get(key)
        if buffer is None or buffer.numel() < numel:
            if scratch:
                sizes = [s["exp_avg"].numel() for s in self.state.values()]
            else:
                from .linear_grad import product_numel

                sizes = [product_numel(p, self.state[p].get("indices")) for p in self.trained_params() if p.dim() == 2]
            largest = max(sizes, default=numel)
            buffer = torch.empty(max(numel, largest), dtype=dtype, device=device)
            self._workspaces[key] = buffer
        return buffer[:numel]

    def _grad_buffer(self, param: nn.Parameter) -> torch.Tensor:
        """The persistent compact-gradient buffer of ``param`` (one value per selected entry)."""
        state = self.state[param]
        buffer = self._grad_buffers.get(param)
        if buffer is None or buffer.numel() != state["exp_avg"].numel():
            buffer = torch.empty_like(state["exp_avg"])
            self._grad_buffers[param] = buffer
        return buffer

    def _world_size(self) -> int:
        if self.distributed is False or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return 1
        return torch.distributed.get_world_size()

    def _reduce(self) -> None:
        """Average the compact gradients over the processes (once per step) and add the L1 term."""
        if self._reduced:
            return
        self._adopt()
        world = self._world_size()
        if self._sharded:
            for _, param in self.named_params():
                if is_sharded(param) and param.grad is not None:  # reduce-scattered by FSDP: averaged already
                    self._add_dense_grad(param, param.grad.to_local().reshape(-1))
                    param.grad = None
        named = [(name, param) for name, param in self.named_params() if not is_sharded(param)]
        if world > 1 and named:
            buffers, flags = [], []
            for _, param in named:
                buffer = self._grads.get(param)
                flags.append(0.0 if buffer is None else 1.0)
                buffers.append(buffer if buffer is not None else self.state[param]["exp_avg"].new_zeros(
                    self.state[param]["exp_avg"].shape))
            device = buffers[0].device if buffers else torch.device("cpu")
            flat = torch.cat([b.reshape(-1).to(torch.float32) for b in buffers] + [torch.tensor(flags, device=device)])
            torch.distributed.all_reduce(flat)
            offset = 0
            for (_, param), buffer in zip(named, buffers):
                n = buffer.numel()
                chunk = flat[offset:offset + n]
                offset += n
                buffer.copy_(chunk.view_as(buffer)).div_(world)
            received = flat[offset:].tolist()
            # A parameter is updated when some process produced a gradient for it, as with DDP.
            shards = {param: grad for param, grad in self._grads.items() if is_sharded(param)}
            self._grads = {param: buffer for (_, param), buffer, seen in zip(named, buffers, received) if seen > 0}
            self._grads.update(shards)
        for group in self.param_groups:
            if group["l1"]:
                for param in group["params"]:
                    if param in self._grads:
                        self._add_l1(param, self._grads[param], group["l1"])
        for term in self.grad_terms:
            term(self)
        self._reduced, self._norm = True, None

    def add_to_grad(self, param: nn.Parameter, compact: torch.Tensor) -> None:
        """Add ``compact`` (one value per selected entry of ``param``) to this step's compact gradient."""
        state = self.state[param]
        if compact.numel() != state["exp_avg"].numel():
            raise ValueError(f"add_to_grad: {compact.numel()} values for {state['exp_avg'].numel()} selected entries")
        compact = compact.reshape(-1).to(state["exp_avg"].dtype)
        buffer = self._grads.get(param)
        if buffer is None:
            self._grads[param] = compact.clone()
        else:
            buffer.add_(compact)
        self._norm = None

    def selected_delta(self, param: nn.Parameter) -> torch.Tensor:
        """``θ - θ0`` at the selected entries of ``param`` (compact, fp32; needs ``track_origin``)."""
        state = self.state[param]
        if "origin_values" not in state:
            raise ValueError("selected_delta needs track_origin=True")
        indices = state.get("indices")
        current = state["master"] if "master" in state else _gather(param, indices)
        return current.to(torch.float32) - self._origin_at(state, indices).to(torch.float32)

    def _add_l1(self, param: nn.Parameter, grad: torch.Tensor, coefficient: float) -> None:
        state = self.state[param]
        current = state["master"] if "master" in state else _gather(param, state.get("indices"))
        origin = self._origin_at(state, state.get("indices")).to(current.dtype)
        grad.add_(torch.sign(current - origin), alpha=coefficient)

    def _origin_at(self, state: dict[str, Any], indices: torch.Tensor | None) -> torch.Tensor:
        """Original values at ``indices`` (the origin covers every entry ever selected)."""
        origin_indices = state["origin_indices"]
        if origin_indices is indices:
            return state["origin_values"]
        if origin_indices is None:
            return state["origin_values"].index_select(0, indices)
        return state["origin_values"][torch.searchsorted(origin_indices, indices)]

    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the (averaged) compact gradients of this step, before clipping (with
        ``step_in_backward``: of the gradients applied in this step's backward, or the last step's)."""
        if self.step_in_backward:
            self._step_pending_shards()
            if not self._stepped:
                return self._last_norm
            if self._norm is None:  # under FSDP2 each process stepped its rows: sum their squares over processes
                squares = self._stepped_sq.clone()
                if self._sharded and self._world_size() > 1:
                    torch.distributed.all_reduce(squares)
                self._norm = squares.sqrt()
            return self._norm
        self._reduce()
        if self._norm is None:
            squares = [g.float().pow(2).sum() for p, g in self._grads.items() if not is_sharded(p)]
            total = torch.stack(squares).sum() if squares else torch.zeros(())
            if self._sharded:  # each process holds its rows' gradients: sum their squares over processes
                device = local(self.named_params()[0][1]).device
                shards = [g.float().pow(2).sum() for p, g in self._grads.items() if is_sharded(p)]
                shard_total = torch.stack(shards).sum() if shards else torch.zeros((), device=device)
                if self._world_size() > 1:
                    torch.distributed.all_reduce(shard_total)
                total = total.to(shard_total.device) + shard_total
            self._norm = total.sqrt()
        return self._norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._grads.clear()
        self._reduced, self._norm = False, None

    # --- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._keep_loaded = False  # only the load right after keep_loaded_state() is skipped
        # step_in_backward: the norm of what this backward stepped (a collective under FSDP2), logged next step
        stepped_norm = self.grad_norm() if self.step_in_backward else None
        self._reduce()
        scale = 1.0
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            # As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
            scale = min(1.0, self.max_grad_norm / (float(self.grad_norm()) + 1e-6))
        updates = []
        for group in self.param_groups:
            for param in group["params"]:
                grad = self._grads.pop(param, None)
                if grad is not None:
                    updates.append(self._update_of(param, group, grad))
        sparse_adamw_multi_(updates, grad_scale=scale)  # one launch for every tensor on CUDA
        self._grads.clear()
        self._reduced, self._norm = False, None
        if self._stepped:
            self._last_norm = stepped_norm if stepped_norm is not None else self._stepped_sq.sqrt()
            self._stepped.clear()
            self._stepped_sq = torch.zeros(())
        self.steps += 1
        if self.refresh_interval and self.steps % self.refresh_interval == 0:
            self.refresh()
        return loss

    def _update(self, param: nn.Parameter, group: dict[str, Any], grad: torch.Tensor, scale: float) -> None:
        """One AdamW step of ``param``'s selected entries from its compact gradient ``grad``."""
        state = self.state[param]
        state["step"] += 1
        beta1, beta2 = group["betas"]
        sparse_adamw_(
            local(param).detach().view(-1),
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("indices"),
            state.get("master"),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step=state["step"],
            grad_scale=scale,
        )

    def _update_of(self, param: nn.Parameter, group: dict[str, Any], grad: torch.Tensor) -> SparseAdamWTensor:
        """``param``'s share of a whole-model step (its step counter advanced)."""
        state = self.state[param]
        state["step"] += 1
        beta1, beta2 = group["betas"]
        return SparseAdamWTensor(local(param).detach().view(-1), grad, state["exp_avg"], state["exp_avg_sq"],
                                 state.get("indices"), state.get("master"), lr=group["lr"], beta1=beta1, beta2=beta2,
                                 eps=group["eps"], weight_decay=group["weight_decay"], step=state["step"])

    # --- refresh -------------------------------------------------------------------------------

    @torch.no_grad()
    def refresh(self, selection: Mapping[str, torch.Tensor | None] | None = None, *,
                reset_state: bool = False, local: bool = False) -> None:
        """Re-apply the selection rule to the current weights (LIFT's periodic re-selection).

        ``selection`` (``{name: mask | indices | None}``, every parameter) replaces the rule for this
        one re-selection. ``reset_state=True`` restarts Adam afterwards: zero moments and step
        counters for every entry (SaRA's progressive stage restarts its optimizer); trained values,
        master copies and the origin are kept. ``local=True``: ``selection`` holds, for a parameter FSDP2
        sharded, indices into this process's shard (each process chose among its own rows), not the whole tensor.
        """
        if selection is None and not callable(self.selection):
            raise ValueError("SparseAdamW.refresh needs a selection rule (a callable)")
        self._adopt()
        if selection is None:
            selected = self._select()
        else:
            rule = self.selection
            self.selection = selection
            try:
                selected = self._select(local_selection=local)
            finally:
                self.selection = rule
        for name, param in self.named_params():
            self._reselect(name, param, selected[name])
            if reset_state:
                state = self.state[param]
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()
                state["step"] = 0

    def _reselect(self, name: str, param: nn.Parameter, new: torch.Tensor | None) -> None:
        """Move ``param``'s state to the entries ``new`` (``None``: every entry)."""
        state = self.state[param]
        old = state.get("indices")
        if old is None and new is None:
            return
        numel = local(param).numel()
        every = torch.arange(numel, device=param.device)
        old_at = every if old is None else old
        new_at = every if new is None else new
        position = torch.searchsorted(old_at, new_at).clamp_(max=max(old_at.numel() - 1, 0))
        kept = old_at[position] == new_at if old_at.numel() else torch.zeros_like(new_at, dtype=torch.bool)
        source = position[kept]

        def carry(values: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            fresh[kept] = values[source]
            return fresh

        state["exp_avg"] = carry(state["exp_avg"], state["exp_avg"].new_zeros(new_at.shape))
        state["exp_avg_sq"] = carry(state["exp_avg_sq"], state["exp_avg_sq"].new_zeros(new_at.shape))
        if "master" in state:
            state["master"] = carry(state["master"], _gather(param, new).to(torch.float32))
        if self.track_origin and state["origin_indices"] is not None:
            origin = state["origin_indices"]
            at = torch.searchsorted(origin, new_at).clamp_(max=max(origin.numel() - 1, 0))
            found = origin[at] == new_at if origin.numel() else torch.zeros_like(new_at, dtype=torch.bool)
            added = new_at[~found]
            if added.numel():
                # Entries never selected before have never moved: their current value is the original.
                merged = torch.cat([origin, added])
                order = torch.argsort(merged)
                values = torch.cat([state["origin_values"], _gather(param, added)])[order]
                state["origin_indices"] = (None if merged.numel() == numel
                                           else compact_indices(merged[order], numel))
                state["origin_values"] = values
        if new is None:
            state.pop("indices", None)
        else:
            state["indices"] = new
        origin = state.get("origin_indices")
        if new is not None and origin is not None and origin is not new and torch.equal(origin, new):
            state["origin_indices"] = new  # one tensor again: saved once

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self._adopt()
        state_dict = super().state_dict()
        state_dict["sparse_engine"] = {"format": STATE_FORMAT, "steps": self.steps}
        return state_dict

    def keep_loaded_state(self) -> None:
        """The state just loaded is this process's rows (FSDP2, :mod:`ftplugins.sparse.resume`): ignore the next
        load of a state dict without the engine's entry, Accelerate's copy that holds rank 0's rows only."""
        self._keep_loaded = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        engine = state_dict.get("sparse_engine")
        if engine is None and self._keep_loaded:
            self._keep_loaded = False
            return
        if engine is None:
            raise ValueError("not a SparseAdamW state dict (no 'sparse_engine' entry); "
                             "it was saved by another optimizer")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)
        ):
            raise ValueError("SparseAdamW state dict has a different number of parameter groups or parameters")
        by_id: dict[int, nn.Parameter] = {}
        for saved, group in zip(saved_groups, self.param_groups):
            names = saved.get("param_names")
            if names is not None and list(names) != list(group["param_names"]):
                first = next(i for i, (a, b) in enumerate(zip(names, group["param_names"])) if a != b)
                raise ValueError(f"SparseAdamW state dict is for other parameters: {names[first]!r} where this "
                                 f"optimizer has {group['param_names'][first]!r}")
            for key, value in saved.items():
                if key not in ("params", "param_names"):
                    group[key] = value
            by_id.update(zip(saved["params"], group["params"]))
        moved: dict[int, torch.Tensor] = {}  # keeps tensors shared in the checkpoint shared after the move

        def to_device(value: Any, device: torch.device) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            if id(value) not in moved:
                moved[id(value)] = value.to(device)
            return moved[id(value)]

        state: defaultdict = defaultdict(dict)
        for key, saved_state in state_dict["state"].items():
            param = by_id[key]
            state[param] = share_equal_origin({k: to_device(v, param.device) for k, v in saved_state.items()})
            _check_state(state[param], param)
        self.state = state
        self.steps = int(engine["steps"])
        self._grads.clear()
        self._grad_buffers.clear()
        self._reduced, self._norm = False, None

    def _broadcast_selection(self, selected: dict[str, torch.Tensor | None],
                             numels: dict[str, int] | None = None) -> dict[str, torch.Tensor | None]:
        """Rank 0's selection on every process (SVDs and ties may differ in the last bit across devices)."""
        dist = torch.distributed
        names = list(selected)
        device = next((t.device for t in selected.values() if t is not None), torch.device("cpu"))
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        sizes = torch.tensor([-1 if selected[n] is None else selected[n].numel() for n in names], device=device)
        dist.broadcast(sizes, src=0)
        total = int(sizes.clamp(min=0).sum())
        if dist.get_rank() == 0 and total:
            flat = torch.cat([selected[n].to(device=device, dtype=torch.int64)
                              for n in names if selected[n] is not None])
        else:
            flat = torch.empty(total, dtype=torch.int64, device=device)
        dist.broadcast(flat, src=0)
        out, offset = {}, 0
        params = dict(self.named_params())
        numels = numels or {name: params[name].numel() for name in names}
        for name, size in zip(names, sizes.tolist()):
            if size < 0:
                out[name] = None
                continue
            out[name] = compact_indices(flat[offset:offset + size].to(params[name].device), numels[name])
            offset += size
        return out


# --- helpers -------------------------------------------------------------------------------------


def compact_indices(indices: torch.Tensor, numel: int) -> torch.Tensor:
    """``indices`` as ``int32`` when the tensor has fewer than 2**31 entries (half the bytes of ``int64``:
    at a LoRA-sized budget the index list is a quarter of the engine's state)."""
    dtype = torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64
    return indices if indices.dtype == dtype else indices.to(dtype)


def share_equal_origin(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``origin_indices`` the very tensor ``indices`` when the two are equal, as the optimizer keeps
    them until a refresh adds entries. A state dict that went through copies loses that sharing (Accelerate's
    ``AcceleratedOptimizer`` moves every tensor to ``cpu:0``, which copies a ``cpu`` tensor, and loads the copies):
    without this, each process would keep a second index list, 4 bytes more per trained entry."""
    indices, origin = state.get("indices"), state.get("origin_indices")
    if (indices is not None and origin is not None and origin is not indices and origin.dtype == indices.dtype
            and origin.device == indices.device and torch.equal(origin, indices)):
        state["origin_indices"] = indices
    return state


def _moment_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def _gather(param: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    flat = local(param).detach().reshape(-1)
    return flat.clone() if indices is None else flat.index_select(0, indices)


def _check_state(state: dict[str, Any], param: nn.Parameter) -> None:
    indices = state.get("indices")
    k = param.numel() if indices is None else indices.numel()
    if indices is not None and indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= param.numel()):
        raise ValueError(f"SparseAdamW state dict: indices out of range for a parameter of shape {tuple(param.shape)}")
    for key in ("exp_avg", "exp_avg_sq", "master"):
        if key in state and state[key].numel() != k:
            raise ValueError(f"SparseAdamW state dict: {key} has {state[key].numel()} entries, expected {k}")


def _own_grad_hook(param: nn.Parameter, optimizer: SparseAdamW) -> None:
    """Route ``param``'s gradient to ``optimizer`` (replacing the hook of an earlier SparseAdamW).

    The hook holds the optimizer weakly, so a discarded optimizer does not stay alive through the
    model; its hook then lets gradients through untouched.
    """
    previous = getattr(param, "_ftplugins_sparse_hook", None)
    if previous is not None:
        previous.remove()
    param._ftplugins_sparse_hook = param.register_post_accumulate_grad_hook(_GradHook(optimizer))


class _GradHook:
    """The post-accumulate-grad hook: a module-level class, not a closure, so that a model the engine
    trains can still be pickled (``torch.save(model)``); a pickled copy's hook is inert (no optimizer)."""

    def __init__(self, optimizer: SparseAdamW | None) -> None:
        self._ref = weakref.ref(optimizer) if optimizer is not None else None

    def __call__(self, param: torch.Tensor) -> None:
        owner = self._ref() if self._ref is not None else None
        if owner is not None:
            owner._accumulate(param)

    def __reduce__(self):
        return _GradHook, (None,)


def release_grad_hooks(params: Iterable[nn.Parameter]) -> None:
    """Remove the engine's gradient hooks (gradients then accumulate in ``.grad`` again)."""
    for param in params:
        handle = getattr(param, "_ftplugins_sparse_hook", None)
        if handle is not None:
            handle.remove()
            del param._ftplugins_sparse_hook

