"""Right, written with loops and habits of their own: float32 arithmetic in affine, relu, conv
and pooling (within float32's rounding), caches in other orders ((w, b, x), (pool_param, x)),
int() of true division for output sizes, per-sample loops for the losses, a max pool backward
that routes through an equality mask split evenly over ties and adds, np.float64 accumulators.
Every function must pass."""

import numpy as np


def affine_forward(x, w, b):
    """x (N, d_1, ..., d_k), w (D, M), b (M,); computed in float32."""
    N = x.shape[0]
    D = 1
    for d in x.shape[1:]:
        D *= d
    x32 = x.astype(np.float32).reshape(N, D)
    out = x32 @ w.astype(np.float32) + b.astype(np.float32)
    cache = (w, b, x)
    return out, cache


def affine_backward(dout, cache):
    """Gradients in float32, from a (w, b, x) cache."""
    w, b, x = cache
    d32 = dout.astype(np.float32)
    dx = (d32 @ w.T.astype(np.float32)).reshape(*x.shape)
    dw = x.reshape(x.shape[0], -1).T.astype(np.float32) @ d32
    db = d32.sum(0)
    return dx, dw, db


def relu_forward(x):
    """float32 output."""
    out = x.astype(np.float32).copy()
    out[out < 0] = 0
    return out, x


def relu_backward(dout, cache):
    x = cache
    dx = np.array(dout, dtype=np.float32, copy=True)
    dx[x <= 0] = 0
    return dx


def dropout_forward(x, dropout_param):
    """
    Inputs:
    - x: Input data, of any shape
    - dropout_param: A dictionary with the following keys:
      - p: Dropout parameter. We keep each neuron output with probability p.
      - mode: 'test' or 'train'.
      - seed: Seed for the random number generator.
    """
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    out = None
    if mode == "train":
        keep = np.random.random_sample(x.shape) < p
        mask = keep.astype(np.float64) * (1.0 / p)
        out = x * mask
    elif mode == "test":
        out = x
    cache = (dropout_param, mask)
    return out, cache


def dropout_backward(dout, cache):
    dropout_param, mask = cache
    if dropout_param["mode"] == "train":
        return mask * dout
    return dout


def conv_forward_naive(x, w, b, conv_param):
    """Loops over every output pixel, float32 sums, a (w, b, x, stride, pad) cache."""
    stride = conv_param["stride"]
    pad = conv_param["pad"]
    N, C, H, W = x.shape
    F, C, HH, WW = w.shape
    Ho = int((H + 2 * pad - HH) / stride) + 1
    Wo = int((W + 2 * pad - WW) / stride) + 1
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=np.float32)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    w32 = w.astype(np.float32)
    out = np.zeros((N, F, Ho, Wo), dtype=np.float32)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                hs = i * stride
                for j in range(Wo):
                    ws = j * stride
                    out[n, f, i, j] = (xp[n, :, hs:hs + HH, ws:ws + WW] * w32[f]).sum() + b[f]
    cache = (w, b, x, stride, pad)
    return out, cache


def conv_backward_naive(dout, cache):
    """Loops over the filter's taps instead of the output pixels."""
    w, b, x, stride, pad = cache
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    _, _, Ho, Wo = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), "constant").astype(np.float32)
    dxp = np.zeros(xp.shape, dtype=np.float32)
    dw = np.zeros(w.shape, dtype=np.float32)
    d32 = dout.astype(np.float32)
    for a in range(HH):
        for c in range(WW):
            rows = slice(a, a + stride * Ho, stride)
            cols = slice(c, c + stride * Wo, stride)
            # (N, C, Ho, Wo) with (N, F, Ho, Wo) -> (F, C)
            dw[:, :, a, c] = np.tensordot(d32, xp[:, :, rows, cols], axes=([0, 2, 3], [0, 2, 3]))
            dxp[:, :, rows, cols] += np.tensordot(d32, w[:, :, a, c].astype(np.float32),
                                                  axes=([1], [0])).transpose(0, 3, 1, 2)
    db = d32.sum(axis=(0, 2, 3))
    dx = dxp[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


def max_pool_forward_naive(x, pool_param):
    """float32 output, a (pool_param, x) cache."""
    ph = pool_param["pool_height"]
    pw = pool_param["pool_width"]
    s = pool_param["stride"]
    N, C, H, W = x.shape
    Ho = int((H - ph) / s + 1)
    Wo = int((W - pw) / s + 1)
    out = np.zeros((N, C, Ho, Wo), dtype=np.float32)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    out[n, c, i, j] = x[n, c, i * s:i * s + ph, j * s:j * s + pw].max()
    return out, (pool_param, x)


def max_pool_backward_naive(dout, cache):
    """An equality mask per window, split evenly over tied maxima, added into dx."""
    pool_param, x = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, Ho, Wo = dout.shape
    dx = np.zeros(x.shape, dtype=np.float32)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = x[n, c, i * s:i * s + ph, j * s:j * s + pw]
                    mask = window == window.max()
                    share = mask / mask.sum()  # tied maxima split the gradient evenly
                    dx[n, c, i * s:i * s + ph, j * s:j * s + pw] += share * dout[n, c, i, j]
    return dx


def svm_loss(x, y):
    """One sample and one class at a time."""
    N, C = x.shape
    loss = 0.0
    dx = np.zeros_like(x)
    for i in range(N):
        for j in range(C):
            if j == y[i]:
                continue
            margin = x[i, j] - x[i, y[i]] + 1
            if margin > 0:
                loss += margin
                dx[i, j] += 1
                dx[i, y[i]] -= 1
    return loss / N, dx / N


def softmax_loss(x, y):
    """One sample at a time, each shifted by its own max."""
    N, C = x.shape
    loss = np.float64(0)
    dx = np.zeros_like(x)
    for i in range(N):
        s = x[i] - np.max(x[i])
        e = np.exp(s)
        p = e / np.sum(e)
        loss -= np.log(p[y[i]])
        dx[i] = p
        dx[i, y[i]] -= 1
    return loss / N, dx / N


def batchnorm_forward(x, gamma, beta, bn_param):
    """One feature at a time."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D))
    running_var = bn_param.get("running_var", np.zeros(D))
    out = np.zeros_like(x)
    cache = None
    if mode == "train":
        mean = np.zeros(D)
        var = np.zeros(D)
        for d in range(D):
            mean[d] = np.sum(x[:, d]) / N
            var[d] = np.sum((x[:, d] - mean[d]) ** 2) / N
            out[:, d] = gamma[d] * (x[:, d] - mean[d]) / np.sqrt(var[d] + eps) + beta[d]
        cache = (x, mean, var, gamma, eps)
        bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mean
        bn_param["running_var"] = momentum * running_var + (1 - momentum) * var
    else:
        for d in range(D):
            out[:, d] = gamma[d] * (x[:, d] - running_mean[d]) / np.sqrt(running_var[d] + eps) + beta[d]
    return out, cache


def batchnorm_backward(dout, cache):
    """The paper's formulas, from x, mean and var."""
    x, mean, var, gamma, eps = cache
    N = x.shape[0]
    xmu = x - mean
    inv = (var + eps) ** -0.5
    dxhat = dout * gamma
    dvar = np.sum(dxhat * xmu, axis=0) * -0.5 * inv ** 3
    dmean = np.sum(-dxhat * inv, axis=0) + dvar * np.mean(-2.0 * xmu, axis=0)
    dx = dxhat * inv + dvar * 2.0 * xmu / N + dmean / N
    dgamma = np.sum(dout * xmu * inv, axis=0)
    dbeta = np.sum(dout, axis=0)
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    x, mean, var, gamma, eps = cache
    N = x.shape[0]
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    dgamma = np.sum(dout * xhat, axis=0)
    dbeta = np.sum(dout, axis=0)
    dx = gamma * inv / N * (N * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """One sample at a time."""
    eps = ln_param.get("eps", 1e-5)
    N, D = x.shape
    xhat = np.zeros_like(x)
    inv = np.zeros(N)
    for n in range(N):
        mu = x[n].mean()
        inv[n] = 1.0 / np.sqrt(((x[n] - mu) ** 2).mean() + eps)
        xhat[n] = (x[n] - mu) * inv[n]
    return gamma * xhat + beta, (xhat, inv, gamma)


def layernorm_backward(dout, cache):
    xhat, inv, gamma = cache
    N, D = dout.shape
    dx = np.zeros_like(dout)
    for n in range(N):
        g = dout[n] * gamma
        dx[n] = inv[n] * (g - g.mean() - xhat[n] * (g * xhat[n]).mean())
    return dx, np.sum(dout * xhat, axis=0), np.sum(dout, axis=0)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Channel by channel."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, C, H, W = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(C))
    running_var = bn_param.get("running_var", np.zeros(C))
    out = np.zeros_like(x)
    cache = None
    if mode == "train":
        xhat = np.zeros_like(x)
        inv = np.zeros(C)
        new_mean, new_var = np.zeros(C), np.zeros(C)
        for c in range(C):
            m = x[:, c].mean()
            v = x[:, c].var()
            inv[c] = 1.0 / np.sqrt(v + eps)
            xhat[:, c] = (x[:, c] - m) * inv[c]
            out[:, c] = gamma[c] * xhat[:, c] + beta[c]
            new_mean[c] = momentum * running_mean[c] + (1 - momentum) * m
            new_var[c] = momentum * running_var[c] + (1 - momentum) * v
        bn_param["running_mean"], bn_param["running_var"] = new_mean, new_var
        cache = (xhat, inv, gamma)
    else:
        for c in range(C):
            out[:, c] = gamma[c] * (x[:, c] - running_mean[c]) / np.sqrt(running_var[c] + eps) + beta[c]
    return out, cache


def spatial_batchnorm_backward(dout, cache):
    xhat, inv, gamma = cache
    N, C, H, W = dout.shape
    dx = np.zeros_like(dout)
    dgamma, dbeta = np.zeros(C), np.zeros(C)
    for c in range(C):
        g = dout[:, c] * gamma[c]
        dgamma[c] = np.sum(dout[:, c] * xhat[:, c])
        dbeta[c] = np.sum(dout[:, c])
        dx[:, c] = inv[c] * (g - g.mean() - xhat[:, c] * (g * xhat[:, c]).mean())
    return dx, dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group by group with a loop over the samples."""
    eps = gn_param.get("eps", 1e-5)
    N, C, H, W = x.shape
    size = C // G
    xhat = np.zeros_like(x)
    inv = np.zeros((N, G))
    for n in range(N):
        for g in range(G):
            part = x[n, g * size:(g + 1) * size]
            inv[n, g] = 1.0 / np.sqrt(part.var() + eps)
            xhat[n, g * size:(g + 1) * size] = (part - part.mean()) * inv[n, g]
    return gamma * xhat + beta, (xhat, inv, gamma, G)


def spatial_groupnorm_backward(dout, cache):
    xhat, inv, gamma, G = cache
    N, C, H, W = dout.shape
    size = C // G
    dx = np.zeros_like(dout)
    for n in range(N):
        for g in range(G):
            part = slice(g * size, (g + 1) * size)
            d = dout[n, part] * gamma[0, part]
            xh = xhat[n, part]
            dx[n, part] = inv[n, g] * (d - d.mean() - xh * (d * xh).mean())
    dgamma = np.sum(dout * xhat, axis=(0, 2, 3)).reshape(1, C, 1, 1)
    dbeta = np.sum(dout, axis=(0, 2, 3)).reshape(1, C, 1, 1)
    return dx, dgamma, dbeta
