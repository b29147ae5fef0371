"""An emulated accelerator for CPU-only tests of device placement (DESIGN.md section 5.3).

Tensors on the emulated device carry real CPU data and compute for real, but report ``device('lazy')``
(a device type the CPU build of torch knows and never uses here) and refuse what CUDA refuses:

- an op that mixes them with a CPU tensor (0-dim CPU tensors excepted, as CUDA allows) raises CUDA's
  "Expected all tensors to be on the same device" error; moves (``.to``, ``.cpu()``, ``copy_``) and
  ``.item()`` and ``.tolist()`` are allowed and ``.numpy()`` refused, as on CUDA;
- a random draw whose generator is on the other device raises CUDA's "Expected a 'cuda' device type for
  generator" error. ``torch.Generator(device=EMULATED)`` gives a generator for the emulated device.

So code that runs here with the model on :data:`EMULATED` places every accumulator, noise draw and
generator where the model's tensors are, and runs on a GPU the same way. Unlike the ``meta`` device, whose
kernels let ``cpu.add_(meta)`` or ``cpu @ meta`` through and hold no data, every path runs end to end.

Use :func:`emulated_device` (a context manager) and :func:`to_emulated` (moves a model's parameters and
buffers there); :func:`place_federation` moves a whole :class:`fedsb.core.federation.Federation`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
EMULATED = torch.device("lazy")
CPU = torch.device("cpu")


def on_emulated(device: Any) -> bool:
    return isinstance(device, (torch.device, str)) and torch.device(device).type == EMULATED.type


class Emulated(torch.Tensor):
    """A tensor on the emulated device: a CPU tensor (``elem``) behind device metadata ``EMULATED``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Emulated:
        r = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=EMULATED, requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    def __repr__(self, **kwargs: Any) -> str:  # type: ignore[override]
        return f"Emulated({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return _dispatch(func, args, kwargs or {})


def _unwrap(t: Any) -> Any:
    return t.elem if isinstance(t, Emulated) else t


def _wrap(out: Any) -> Any:
    return tree_map(lambda t: Emulated(t) if isinstance(t, torch.Tensor) and not isinstance(t, Emulated) else t, out)


def _dispatch(func, args, kwargs):  # type: ignore[no-untyped-def]
    dev = kwargs.get("device")
    kw = dict(kwargs, device=CPU) if on_emulated(dev) else kwargs
    if func is aten._to_copy.default:  # .to(device) / .cpu(): a legal move
        src = args[0]
        out = func(_unwrap(src), **kw)
        return _wrap(out) if on_emulated(dev if dev is not None else src.device) else out
    if func is aten.copy_.default:  # copy_ across devices is legal
        _unwrap(args[0]).copy_(_unwrap(args[1]), *args[2:], **kwargs)
        return args[0]
    if func is aten._local_scalar_dense.default:  # .item(): a sync, legal
        return func(_unwrap(args[0]))
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    emulated = on_emulated(dev) or any(isinstance(t, Emulated) for t in tensors)
    if emulated:
        cpu = [tuple(t.shape) for t in tensors if not isinstance(t, Emulated) and t.dim() > 0]
        if cpu:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{EMULATED.type} and cpu! ({func}: cpu tensors of shapes {cpu})")
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kw))
    return _wrap(out) if emulated else out


class _Dispatch(TorchDispatchMode):
    """Catches factory ops for the emulated device (no tensor argument reaches ``Emulated.__torch_dispatch__``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return _dispatch(func, args, kwargs or {})


_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


class _Functions(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` builds below Python dispatch (made on the CPU, then moved), and the
    generator check, which needs the Python generator object (dispatch sees a fresh wrapper)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist and isinstance(args[0], Emulated):  # a sync, as on CUDA
            return args[0].elem.tolist()
        if func is torch.Tensor.numpy and isinstance(args[0], Emulated):
            raise TypeError("can't convert lazy device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")
        if func in _DATA_FACTORIES and on_emulated(kwargs.get("device")):
            return func(*args, **dict(kwargs, device=CPU)).to(EMULATED)
        gen = kwargs.get("generator")
        if gen is not None:
            emulated = on_emulated(kwargs.get("device")) or any(isinstance(t, Emulated) for t in tree_flatten(args)[0])
            if getattr(gen, "emulated", False) != emulated:
                want, have = (EMULATED.type, "cpu") if emulated else ("cpu", EMULATED.type)
                raise RuntimeError(f"Expected a '{want}' device type for generator but found '{have}' "
                                   f"({getattr(func, '__name__', func)})")
        return func(*args, **kwargs)


_RealGenerator = torch.Generator


class EmulatedGenerator(_RealGenerator):  # type: ignore[misc, valid-type]
    """``torch.Generator`` while :func:`emulated_device` is active: ``device=EMULATED`` gives a generator for
    the emulated device (a CPU generator underneath, marked)."""

    def __new__(cls, device: Any = None) -> EmulatedGenerator:
        if on_emulated(device):
            return super().__new__(cls)
        return super().__new__(cls, device) if device is not None else super().__new__(cls)

    def __init__(self, device: Any = None) -> None:
        self.emulated = on_emulated(device)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return EMULATED if self.emulated else _RealGenerator.device.__get__(self)  # type: ignore[attr-defined]


@contextmanager
def emulated_device() -> Iterator[None]:
    """Run a block with the emulated device's rules in force (see the module docstring)."""
    torch.Generator = EmulatedGenerator  # type: ignore[misc]
    try:
        with _Functions(), _Dispatch():
            yield
    finally:
        torch.Generator = _RealGenerator  # type: ignore[misc]


def to_emulated(module: nn.Module) -> nn.Module:
    """Move every parameter and buffer of ``module`` to the emulated device, in place."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and not isinstance(p, Emulated):
                m._parameters[name] = nn.Parameter(Emulated(p.detach().clone()), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and not isinstance(b, Emulated):
                m._buffers[name] = Emulated(b.detach().clone())
    return module


def place_federation(fed: Any) -> Any:
    """Put a CPU-built :class:`fedsb.core.federation.Federation` on the emulated device, as ``model.device`` would."""
    to_emulated(fed.adapted)
    fed.device = EMULATED
    fed.objective.device = EMULATED
    return fed
