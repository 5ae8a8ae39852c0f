"""Rounding error of simple GLA's ``<S, dS'>`` (the gate gradient's state term, one per chunk and head) at bf16,
on CPU in float64: ``S`` stored in bf16 times ``dS'`` from the float32 accumulator (summed in the state-gradient
pass, ``STATE_DOT_IN_DQK = False``) against both stored in bf16 (summed in the dq / dk kernel, the default).

    python benchmarks/simple_gla_state_dot_precision.py

Inputs as tests/linear/test_gpu.py's bf16 case (T = 16384, H = 2, D = 128). Prints the relative error of the
term and its share of the relative error of ``dg`` (against the float64 torch backend's gradient).
"""
import torch
import torch.nn.functional as F

from tessera.linear import ops

T, H, D, BT = 16384, 2, 128, 64
NT = T // BT


def inputs() -> dict:
    """bf16-rounded q, k, v and log-decays g (float64), upstream gradients do and dht, initial state h0."""
    bf = torch.bfloat16
    q, k, v = (torch.randn(T, H, D).to(bf).double() for _ in range(3))
    return {"q": q, "k": 0.5 * k, "v": v, "g": F.logsigmoid(torch.randn(T, H) + 3).to(bf).double(),
            "do": torch.randn(T, H, D).double(), "h0": torch.randn(H, D, D).double(),
            "dht": torch.randn(H, D, D).double()}


def states(x: dict, b: torch.Tensor):
    """States entering every chunk ``S [NT, H, D, D]`` and the gradients of the states leaving them
    ``dS'``; ``b``: chunk-local cumulative log-decay ``[NT, BT, H]``."""
    bC = b[:, -1]
    S, dS = torch.empty(NT, H, D, D, dtype=torch.float64), torch.empty(NT, H, D, D, dtype=torch.float64)
    s = x["h0"].clone()
    for c in range(NT):
        S[c] = s
        rows = slice(c * BT, (c + 1) * BT)
        kw = x["k"][rows] * torch.exp(bC[c][None] - b[c])[..., None]
        s = torch.exp(bC[c])[:, None, None] * s + torch.einsum("thk,thv->hkv", kw, x["v"][rows])
    d = x["dht"].clone()
    for c in reversed(range(NT)):
        dS[c] = d
        rows = slice(c * BT, (c + 1) * BT)
        qw = x["q"][rows] * torch.exp(b[c])[..., None] * D ** -0.5
        d = torch.exp(bC[c])[:, None, None] * d + torch.einsum("thk,thv->hkv", qw, x["do"][rows])
    return S, dS


def reference_dg(x: dict) -> torch.Tensor:
    """Gradient of the log-decays ``[NT, BT, H]`` through the float64 torch backend."""
    q, k, v = (x[n].clone().view(1, T, H, D) for n in "qkv")
    g, h0 = x["g"].clone().view(1, T, H).requires_grad_(True), x["h0"].view(1, H, D, D)
    o, s = ops.simple_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="torch")
    dg, = torch.autograd.grad((o * x["do"].view(1, T, H, D)).sum() + (s * x["dht"].view(1, H, D, D)).sum(), [g])
    return dg.view(NT, BT, H)


def main() -> None:
    torch.manual_seed(0)
    x = inputs()
    b = x["g"].view(NT, BT, H).cumsum(1)
    S, dS = states(x, b)
    weight = torch.exp(b[:, -1])  # the term enters dg of every token of its chunk as exp(b_C) <S, dS'>
    exact = weight * (S * dS).sum((-1, -2))
    S16 = S.to(torch.bfloat16).double()
    dg = reference_dg(x)
    for name, dS_used in (("state pass (bf16 S, fp32 dS')", dS.float().double()),
                          ("dq/dk kernel (bf16 S, bf16 dS')", dS.to(torch.bfloat16).double())):
        err = weight * (S16 * dS_used).sum((-1, -2)) - exact
        share = err[:, None, :].expand(NT, BT, H).norm() / dg.norm()
        print(f"{name}: relative error of the term {err.norm() / exact.norm():.2e}, "
              f"its share of dg's relative error {share:.2e}")


if __name__ == "__main__":
    main()
