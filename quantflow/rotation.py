"""Rotations of a Llama's residual stream (QuaRot arXiv 2404.00456, SpinQuant
arXiv 2405.16406), folded offline into the weights: free in hardware, exact in
float arithmetic.

An orthogonal Q [hidden, hidden] rotates every residual vector x (a row) to x Q.
RMSNorm commutes with it only without a per-channel weight (||x Q|| = ||x||), so
first every norm weight is folded into the linears that read it:

  fuse_norms       input_layernorm g -> q/k/v columns (W diag(g)),
                   post_attention_layernorm -> gate/up columns, the final norm ->
                   the LM head's columns; the norm weights become ones. A tied LM
                   head is untied first (it becomes W diag(g_final), the embedding
                   stays E).
  rotate_residual  embedding E <- E Q; every linear reading the residual (q/k/v,
                   gate/up, LM head) W <- W Q; every linear writing it (o_proj,
                   down_proj) W <- Q^T W.

Then the model computes the same logits (tests: within float rounding), but the
linears' input channels are mixed: the few massive channels of the residual
stream (and of the weights that read them) are spread over all channels, which
is what W4 groups and A8 per-token scales need. Every product is done in float64
and rounded to float32 once per tensor.

Partial rotation (`keep` channels): RMSNorm_g(x) Q = RMSNorm_g'(x Q) whenever
Q^T diag(g) Q = diag(g') is diagonal, so a set of channels can stay out of the
rotation (Q only permutes them: partial_rotation gathers them into the first
positions, i.e. whole leading weight groups) and keep their own norm weights;
only the rotated channels' weights are folded (down to one common weight c each). massive_channels picks them from calibration data: the
channels holding most of the normalized activations' energy at the norms' inputs
(SmolLM2: 4 channels hold about half of it, and its norms give them weights near
0, i.e. the norms, not the linears, discard them; a full rotation moves that job
into the quantized weights and the A8 inputs).

Rotation matrices (rotation_matrix; `kind`, ROTATION_KINDS):
  hadamard          one Walsh-Hadamard matrix of order n (entries +-1/sqrt(n)):
                    Sylvester for n = 2^k, Kronecker products with Paley's H12
                    otherwise (576 = 12 x 12 x 4, 1536 = 12 x 128)
  random-hadamard   diag(+-1, seeded) times that Hadamard (QuaRot's)
  block-hadamard    block-diagonal Sylvester Hadamard of `block` (576: 9 x 64)
  random            a seeded Haar-random orthogonal matrix (SpinQuant's start)
  kron-random-hadamard  R (n/block x n/block, seeded Haar random) Kronecker the
                    Sylvester Hadamard of `block` (576: R9 x H64)
Seeds go through torch.Generator(seed), so a rotation is the same on every run.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from golden.validate import check_int

from .errors import QuantflowError

if TYPE_CHECKING:
    from .models.llama import LlamaForCausalLM

__all__ = ["ROTATION_KINDS", "hadamard_matrix", "random_orthogonal", "rotation_matrix",
           "partial_rotation", "massive_channels", "fuse_norms", "rotate_residual",
           "rotate_model"]

ROTATION_KINDS = ("hadamard", "random-hadamard", "block-hadamard", "random",
                  "kron-random-hadamard")


# --------------------------------------------------------------------------- matrices
def _sylvester(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _paley12() -> torch.Tensor:
    """The +-1 Hadamard matrix of order 12 (Paley construction I, q = 11)."""
    q = 11
    residues = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if a in residues else -1 for a in range(1, q)]
    Q = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)],
                     dtype=torch.float64)
    S = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return torch.eye(q + 1, dtype=torch.float64) + S


def _hadamard_pm1(n: int) -> torch.Tensor | None:
    if n >= 1 and not n & (n - 1):
        return _sylvester(n)
    if n % 12 == 0:
        rest = _hadamard_pm1(n // 12)
        if rest is not None:
            return torch.kron(_paley12(), rest)
    return None


def hadamard_matrix(n: int) -> torch.Tensor:
    """An orthonormal Hadamard matrix [n, n], float64, entries +-1/sqrt(n), for
    n = 2^k * 12^j (Sylvester and Paley's order 12)."""
    check_int("n", n, 1)
    H = _hadamard_pm1(n)
    if H is None:
        raise QuantflowError(f"no Hadamard matrix of order {n} is built here (orders "
                             f"2^k * 12^j); use rotation kind 'block-hadamard' (a block "
                             f"that divides {n}) or 'random'")
    return H / math.sqrt(n)


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal matrix [n, n], float64: QR of a seeded Gaussian
    with R's diagonal made positive (so Q is unique)."""
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    d = torch.diagonal(R)
    return (Q * torch.where(d < 0, -1.0, 1.0).to(torch.float64)).contiguous()


def _random_signs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1


def rotation_matrix(kind: str, n: int, *, seed: int = 0, block: int = 64) -> torch.Tensor:
    """The orthogonal matrix [n, n] (float64) of rotation `kind` (module docstring)."""
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    check_int("block", block, 1)
    if kind not in ROTATION_KINDS:
        raise QuantflowError(f"rotation kind {kind!r} is not supported; use one of "
                             f"{ROTATION_KINDS}")
    if kind == "hadamard":
        return hadamard_matrix(n)
    if kind == "random-hadamard":
        return _random_signs(n, seed).unsqueeze(1) * hadamard_matrix(n)
    if kind == "random":
        return random_orthogonal(n, seed)
    if n % block or block & (block - 1):
        raise QuantflowError(f"rotation kind {kind!r} needs a power-of-two block that "
                             f"divides {n}, got block={block}")
    H = _sylvester(block) / math.sqrt(block)
    outer = torch.eye(n // block, dtype=torch.float64) if kind == "block-hadamard" \
        else random_orthogonal(n // block, seed)
    return torch.kron(outer, H)


def partial_rotation(R: torch.Tensor, n: int, keep: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The [n, n] orthogonal matrix that moves channels `keep` unchanged to the first
    len(keep) positions (in their order) and rotates the others by R (of order
    n - len(keep)) into the remaining positions: a permutation, so the kept channels
    fill whole leading weight groups instead of sitting inside rotated ones."""
    keep = torch.as_tensor(keep, dtype=torch.int64).reshape(-1)
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    rest = torch.nonzero(mask).squeeze(1)
    if tuple(R.shape) != (len(rest), len(rest)) or len(torch.unique(keep)) != len(keep):
        raise QuantflowError(f"partial rotation: R is {tuple(R.shape)}, {len(rest)} channels "
                             f"are rotated (keep must be distinct channels < {n})")
    k = len(keep)
    Q = torch.zeros(n, n, dtype=torch.float64)
    Q[keep, torch.arange(k)] = 1.0
    Q[rest.unsqueeze(1), torch.arange(k, n).unsqueeze(0)] = R.to(torch.float64)
    return Q


# --------------------------------------------------------------------------- folds
def _llama(model):
    from .models.llama import LlamaForCausalLM
    if not isinstance(model, LlamaForCausalLM):
        raise QuantflowError(f"residual rotations need a Llama model "
                             f"(quantflow.models.llama), got {type(model).__name__}")
    return model


def _scale_columns(lin: nn.Linear, g: torch.Tensor) -> None:
    lin.weight.data.copy_((lin.weight.data.double() * g).to(lin.weight.dtype))


@torch.no_grad()
def massive_channels(model: LlamaForCausalLM, calib_ids: torch.Tensor, k: int) -> torch.Tensor:
    """The k residual channels with the largest energy of the normalized activation
    x / rms(x), summed over every RMSNorm's input and the calibration tokens
    [B, T] (one sequence at a time), in descending order (int64 [k])."""
    m = _llama(model)
    check_int("k", k, 0, m.config.hidden_size - 1)
    norms = [m.model.norm] + [n for l in m.model.layers
                              for n in (l.input_layernorm, l.post_attention_layernorm)]
    energy = torch.zeros(m.config.hidden_size, dtype=torch.float64)

    def hook(mod, args):
        x = args[0].detach().double()
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.eps)
        energy.add_(n.pow(2).reshape(-1, n.shape[-1]).sum(0))

    hs = [n.register_forward_pre_hook(hook) for n in norms]
    try:
        for b in range(calib_ids.shape[0]):
            m(calib_ids[b:b + 1])
    finally:
        for h in hs:
            h.remove()
    return torch.argsort(energy, descending=True, stable=True)[:k]


def _norms(m):
    return [m.model.norm] + [n for l in m.model.layers
                             for n in (l.input_layernorm, l.post_attention_layernorm)]


@torch.no_grad()
def fuse_norms(model: LlamaForCausalLM, keep: torch.Tensor | Sequence[int] | None = None) -> None:
    """Fold every RMSNorm weight into the linears that read it (module docstring);
    the norm weights become ones and a tied LM head gets its own tensor. With
    channels `keep`, their weights stay in the norms and the other channels keep
    one common weight c = RMS of theirs (g / c is folded), so kept and rotated
    channels stay in the model's proportion (A8 per-token scales and the weight
    groups that mix them see the same balance)."""
    m = _llama(model)
    n = m.config.hidden_size
    fold = torch.ones(n, dtype=torch.bool)
    if keep is not None:
        fold[torch.as_tensor(keep, dtype=torch.int64)] = False

    def split(norm):
        g = norm.weight.data.double()
        # with kept channels the rotated ones keep one common weight c, the RMS of
        # theirs, so the balance between kept and rotated channels stays the model's
        c = g[fold].pow(2).mean().sqrt().clamp(min=1e-30) if keep is not None \
            else torch.ones((), dtype=torch.float64)
        moved = torch.where(fold, g / c, torch.ones_like(g))
        norm.weight.data.copy_(torch.where(fold, c, g).to(norm.weight.dtype))
        return moved

    for layer in m.model.layers:
        a, p = layer.self_attn, layer.mlp
        for norm, readers in ((layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)),
                              (layer.post_attention_layernorm, (p.gate_proj, p.up_proj))):
            g = split(norm)
            for lin in readers:
                _scale_columns(lin, g)
    if m.lm_head.weight is m.model.embed_tokens.weight:
        m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone(),
                                        requires_grad=m.lm_head.weight.requires_grad)
    _scale_columns(m.lm_head, split(m.model.norm))


def _rotated_norm_weight(g: torch.Tensor, Q: torch.Tensor) -> torch.Tensor | None:
    """g' with RMSNorm_g(x) Q = RMSNorm_g'(x Q), i.e. Q^T diag(g) Q = diag(g') (ones
    on rotated channels, a permutation of the kept ones), or None when Q^T diag(g) Q
    is not diagonal (the norm does not commute with the rotation)."""
    M = Q.T @ (g.double().unsqueeze(1) * Q)
    d = torch.diagonal(M).clone()
    off = (M - torch.diag(d)).abs().max()
    return d if float(off) <= 1e-12 * max(1.0, float(g.abs().max())) else None


@torch.no_grad()
def rotate_residual(model: LlamaForCausalLM, Q: torch.Tensor) -> None:
    """x -> x Q on the residual stream of a model whose norms are ones on the rotated
    channels (fuse_norms first): E Q, readers W Q, writers Q^T W, and the norm
    weights follow the kept channels Q moves (module docstring)."""
    m = _llama(model)
    n = m.config.hidden_size
    if not isinstance(Q, torch.Tensor) or tuple(Q.shape) != (n, n):
        raise QuantflowError(f"the rotation must be a [{n}, {n}] tensor, got "
                             f"{getattr(Q, 'shape', type(Q).__name__)}")
    Q = Q.to(torch.float64)
    err = float((Q @ Q.T - torch.eye(n, dtype=torch.float64)).abs().max())
    if err > 1e-9:
        raise QuantflowError(f"the rotation is not orthogonal (max |Q Q^T - I| = {err:.2e})")
    new_g = [_rotated_norm_weight(norm.weight.detach(), Q) for norm in _norms(m)]
    if any(g is None for g in new_g):
        raise QuantflowError("RMSNorm weights must be ones on the rotated channels before "
                             "a rotation (a weighted norm does not commute with it): call "
                             "fuse_norms first")
    if m.lm_head.weight is m.model.embed_tokens.weight:
        raise QuantflowError("internal: the LM head is still tied; fuse_norms unties it")

    def right(w):   # W Q: a linear reading the residual, or the embedding's rows
        w.data.copy_((w.data.double() @ Q).to(w.dtype))

    def left(w):    # Q^T W: a linear writing the residual
        w.data.copy_((Q.T @ w.data.double()).to(w.dtype))

    for norm, g in zip(_norms(m), new_g):
        norm.weight.data.copy_(g.to(norm.weight.dtype))
    right(m.model.embed_tokens.weight)
    right(m.lm_head.weight)
    for layer in m.model.layers:
        a, p = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, p.gate_proj, p.up_proj):
            right(lin.weight)
        for lin in (a.o_proj, p.down_proj):
            left(lin.weight)
            if lin.bias is not None:
                lin.bias.data.copy_((lin.bias.data.double() @ Q).to(lin.bias.dtype))


def rotate_model(model: LlamaForCausalLM, kind: str, *, seed: int = 0, block: int = 64,
                 keep: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """fuse_norms, then rotate_residual by rotation_matrix(kind, hidden, seed, block),
    or with channels `keep` (e.g. massive_channels) left out: moved unrotated to the
    first positions, rotation_matrix(kind, hidden - len(keep)) on the rest
    (partial_rotation). Returns Q (float64)."""
    m = _llama(model)
    n = m.config.hidden_size
    if keep is None or len(keep) == 0:
        Q = rotation_matrix(kind, n, seed=seed, block=block)
        keep = None
    else:
        keep = torch.as_tensor(keep, dtype=torch.int64).reshape(-1)
        Q = partial_rotation(rotation_matrix(kind, n - len(keep), seed=seed, block=block),
                             n, keep)
    fuse_norms(m, keep)
    rotate_residual(m, Q)
    return Q
