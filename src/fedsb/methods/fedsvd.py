"""FedSVD (Lee et al., NeurIPS 2025): clients train B on a shared frozen A; the server averages B and then
re-factorises every layer so that A has orthonormal rows, leaving the product ``B A`` unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pydantic import Field
from torch import Tensor

from fedsb.adapters.model import AdaptedModel
from fedsb.methods.base import ClientUpdate, Method, MethodOptions, ServerState, weighted_mean

_A, _B = ".lora_A.weight", ".lora_B.weight"


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread: LAPACK/BLAS reductions then add in a fixed order, so the bits do not depend on the
    machine's thread count (the factors are tiny; one thread costs nothing)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refactorise(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """``(B', A')`` with ``B' A' = B A``, ``A'`` with orthonormal rows and ``B' = U S`` (the rank-r SVD of ``B A``).

    Never forms the ``d_out x d_in`` product: ``B = Q_B R_B``, ``A^T = Q_A R_A``, ``U_r S V_r^T = svd(R_B R_A^T)``,
    ``B' = Q_B U_r S``, ``A' = (Q_A V_r)^T``; ``O((d_in + d_out) r^2)``. Computed in float64 on the CPU with one
    thread and a fixed sign convention (the largest-magnitude entry of each left singular vector is positive,
    the first one on a tie), so the same inputs give the same bits in every process. Returns float32 CPU tensors.

    Parameters
    ----------
    b : Tensor
        ``d_out x r``.
    a : Tensor
        ``r x d_in``, with ``r <= min(d_in, d_out)``.
    """
    with _one_thread():
        b64 = b.detach().to(device="cpu", dtype=torch.float64)
        a64 = a.detach().to(device="cpu", dtype=torch.float64)
        q_b, r_b = torch.linalg.qr(b64)
        q_a, r_a = torch.linalg.qr(a64.T)
        u_r, s, vh_r = torch.linalg.svd(r_b @ r_a.T)
        u = q_b @ u_r
        v = q_a @ vh_r.T
        cols = torch.arange(u.shape[1])
        sign = torch.sign(u[u.abs().argmax(dim=0), cols])
        sign[sign == 0] = 1.0  # an all-zero column (B = 0) keeps its basis
        u, v = u * sign, v * sign
        return (u * s).to(torch.float32), v.T.contiguous().to(torch.float32)


class FedSVD(Method):
    """FedSVD.

    Adapter as FFA-LoRA (``s B A``, clients train B and the task head; A frozen within a round) and the same
    PEFT init (A kaiming-uniform from the shared seed, B = 0). The server takes the weighted mean of the
    uploaded B's (exact, since all clients share A), then every ``svd_period`` aggregations re-factorises each
    layer with :func:`refactorise`: A becomes the orthonormal right singular vectors of ``B A`` and B becomes
    ``U S`` (not reset), so the model does not change. The scale ``alpha / r`` stays out of the SVD (it
    multiplies both sides). A is no longer derivable from the seed, so the broadcast carries A and B
    (``r (d_in + d_out)`` per layer); the upload is B (``r d_out``).

    The uploads are only summed (``additive``): secure aggregation, client-level DP and sample-level DP (DP-SGD
    on B, as for FFA-LoRA) apply, and the SVD is post-processing of the privatised mean.

    Not implemented: the paper's client-side-SVD variant (broadcast B only, every client repeats the SVD). It
    needs every one of the K clients to receive every round's B and a bit-identical SVD on every party (same
    LAPACK, same algorithm); a single party computing A avoids both.
    """

    class Options(MethodOptions):
        """``[method_options]`` of fedsvd."""

        #: Re-factorise after every n-th aggregation (the paper: n in {1, 2, 5, 10} perform alike; default 1).
        svd_period: int = Field(1, ge=1)

    options: Options

    name = "fedsvd"
    adapter_mode = "ffa"
    exact = True
    additive = True
    summary = "FedSVD: train and average B on a shared A, server re-orthogonalises A by SVD of BA (exact; r*d_out up)"
    plot_style = ("v", "tab:olive")

    @classmethod
    def layer_round_params(cls, r: int, d_out: int, d_in: int, k: int) -> tuple[int, int]:
        return r * d_out, r * (d_in + d_out)

    @classmethod
    def default_lr(cls, rank: int) -> float:
        # Only B trains, as for FFA-LoRA. Kept as the centre of `fedsb compare --tune-lr`'s grid: the tuned rate
        # differs by task (3e-2 on the default task, 3e-3 on 2-digit arithmetic), so no single default is "tuned".
        return 1e-2

    def broadcast_names(self, adapted: AdaptedModel) -> list[str]:
        return adapted.adapter_state_names() + adapted.head_state_names()

    def aggregate(self, state: ServerState, updates: list[ClientUpdate]) -> ServerState:
        trained = [n for n in state.adapter if not n.endswith(_A)]  # B and the head: what the clients upload
        adapter = {**state.adapter, **weighted_mean(updates, trained, self.weights(updates))}
        aggregations = state.round + 1
        if aggregations % self.options.svd_period == 0:
            for a_name in [n for n in adapter if n.endswith(_A)]:
                b_name = a_name.removesuffix(_A) + _B
                adapter[b_name], adapter[a_name] = refactorise(adapter[b_name], adapter[a_name])
        return ServerState(round=aggregations, adapter=adapter)
