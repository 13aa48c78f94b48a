"""Right, written the vectorized way: caches as dicts or tuples in orders of the student's own,
conv by im2col columns (a helper of the file's own) and einsum, max pool keeping the flat argmax
index of each window in its cache, keepdims everywhere, relu by np.where, dropout by a binomial
draw. Every function must pass."""

import numpy as np


def affine_forward(x, w, b):
    """x (N, d_1, ..., d_k), w (D, M), b (M,) -> out (N, M), cache."""
    N = x.shape[0]
    flat = np.reshape(x, (N, np.prod(x.shape[1:])))
    out = np.matmul(flat, w) + b[None, :]
    cache = {"x_shape": x.shape, "flat": flat, "w": w}
    return out, cache


def affine_backward(dout, cache):
    """dout (N, M), cache dict -> dx (N, d_1, ..., d_k), dw (D, M), db (M,)."""
    dx = np.matmul(dout, cache["w"].T).reshape(cache["x_shape"])
    dw = np.matmul(cache["flat"].T, dout)
    db = dout.sum(axis=0, keepdims=True).ravel()
    return dx, dw, db


def relu_forward(x):
    """Any shape."""
    out = np.where(x > 0, x, 0.0)
    mask = x > 0
    return out, mask


def relu_backward(dout, cache):
    """The cache is the boolean mask of the positive inputs."""
    return np.where(cache, dout, 0.0)


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
    if mode == "train":
        mask = np.random.binomial(1, p, size=x.shape) / p
        out = x * mask
    else:
        out = x.copy()
    return out, {"param": dropout_param, "mask": mask}


def dropout_backward(dout, cache):
    """The mask from the dict cache."""
    if cache["param"]["mode"] == "train":
        return dout * cache["mask"]
    return dout


def im2col(x_pad, HH, WW, stride, H_out, W_out):
    """x_pad (N, C, Hp, Wp) -> columns (C * HH * WW, N * H_out * W_out)."""
    N, C = x_pad.shape[:2]
    cols = np.empty((C, HH, WW, N, H_out, W_out))
    for a in range(HH):
        for c in range(WW):
            patch = x_pad[:, :, a:a + stride * H_out:stride, c:c + stride * W_out:stride]
            cols[:, a, c] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * HH * WW, -1)


def col2im(cols, x_shape, HH, WW, stride, H_out, W_out):
    """The adjoint of im2col: sums the columns back into a padded image."""
    N, C, Hp, Wp = x_shape
    cols = cols.reshape(C, HH, WW, N, H_out, W_out)
    x_pad = np.zeros(x_shape)
    for a in range(HH):
        for c in range(WW):
            x_pad[:, :, a:a + stride * H_out:stride, c:c + stride * W_out:stride] += \
                cols[:, a, c].transpose(1, 0, 2, 3)
    return x_pad


def conv_forward_naive(x, w, b, conv_param):
    """x (N, C, H, W), w (F, C, HH, WW), b (F,) -> out (N, F, H', W'), im2col cache."""
    S, P = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out, W_out = int(1 + (H + 2 * P - HH) / S), int(1 + (W + 2 * P - WW) / S)
    x_pad = np.pad(x, [(0, 0), (0, 0), (P, P), (P, P)])
    cols = im2col(x_pad, HH, WW, S, H_out, W_out)
    res = w.reshape(F, -1) @ cols + b.reshape(-1, 1)
    out = res.reshape(F, N, H_out, W_out).transpose(1, 0, 2, 3)
    cache = (cols, w, x_pad.shape, conv_param, x.shape)
    return out, cache


def conv_backward_naive(dout, cache):
    """Through the columns: dw by einsum, dx by col2im."""
    cols, w, pad_shape, conv_param, x_shape = cache
    S, P = conv_param["stride"], conv_param["pad"]
    F, C, HH, WW = w.shape
    N, _, H_out, W_out = dout.shape
    d_res = dout.transpose(1, 0, 2, 3).reshape(F, -1)
    db = np.einsum("nfij->f", dout)
    dw = np.einsum("fk,ck->fc", d_res, cols).reshape(w.shape)
    dcols = w.reshape(F, -1).T @ d_res
    dx_pad = col2im(dcols, pad_shape, HH, WW, S, H_out, W_out)
    H, W = x_shape[2], x_shape[3]
    dx = dx_pad[:, :, P:P + H, P:P + W]
    return dx, dw, db


def max_pool_forward_naive(x, pool_param):
    """Keeps the flat argmax of each window: (N, C, H', W') integers."""
    HP, WP, S = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out, W_out = (H - HP) // S + 1, (W - WP) // S + 1
    out = np.empty((N, C, H_out, W_out))
    arg = np.empty((N, C, H_out, W_out), dtype=int)
    for i in range(H_out):
        for j in range(W_out):
            window = x[:, :, i * S:i * S + HP, j * S:j * S + WP].reshape(N, C, -1)
            arg[:, :, i, j] = window.argmax(axis=2)
            out[:, :, i, j] = window.max(axis=2)
    cache = {"arg": arg, "shape": x.shape, "param": pool_param}
    return out, cache


def max_pool_backward_naive(dout, cache):
    """Routes each upstream value to its window's argmax, adding where windows overlap."""
    HP, WP, S = cache["param"]["pool_height"], cache["param"]["pool_width"], cache["param"]["stride"]
    arg = cache["arg"]
    dx = np.zeros(cache["shape"])
    N, C, H_out, W_out = dout.shape
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for i in range(H_out):
        for j in range(W_out):
            r, s = np.divmod(arg[:, :, i, j], WP)
            np.add.at(dx, (n_idx, c_idx, i * S + r, j * S + s), dout[:, :, i, j])
    return dx


def svm_loss(x, y):
    """Vectorized hinge loss with a boolean mask of the positive margins."""
    N = len(y)
    margins = x - x[range(N), y].reshape(-1, 1) + 1
    margins[range(N), y] = 0
    positive = margins > 0
    loss = margins[positive].sum() / N
    dx = positive.astype(float)
    dx[range(N), y] -= positive.sum(axis=1)
    dx /= N
    return loss, dx


def softmax_loss(x, y):
    """Log-sum-exp written out, with the max shift."""
    N = x.shape[0]
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    loss = np.mean(lse[:, 0] - x[np.arange(N), y])
    dx = np.exp(x - lse)
    dx[np.arange(N), y] -= 1
    return loss, dx / N


def batchnorm_forward(x, gamma, beta, bn_param):
    """Running statistics kept with keepdims (1, D); a dict cache."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    D = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros((1, D)))
    running_var = bn_param.get("running_var", np.zeros((1, D)))
    cache = None
    if mode == "train":
        mean = x.mean(axis=0, keepdims=True)
        var = x.var(axis=0, keepdims=True)
        std = np.sqrt(var + eps)
        x_hat = (x - mean) / std
        out = gamma * x_hat + beta
        cache = {"x_hat": x_hat, "std": std, "gamma": gamma}
        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var = momentum * running_var + (1 - momentum) * var
    else:
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return out, cache


def batchnorm_backward(dout, cache):
    """From the dict cache, through x_hat."""
    x_hat, std, gamma = cache["x_hat"], cache["std"], cache["gamma"]
    N = dout.shape[0]
    dgamma = np.sum(dout * x_hat, axis=0)
    dbeta = np.sum(dout, axis=0)
    dx_hat = dout * gamma
    dx = (dx_hat - dx_hat.mean(axis=0, keepdims=True)
          - x_hat * (dx_hat * x_hat).mean(axis=0, keepdims=True)) / std
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    """The same, with N written out."""
    x_hat, std, gamma = cache["x_hat"], cache["std"], cache["gamma"]
    N = dout.shape[0]
    dx_hat = dout * gamma
    dx = (1.0 / (N * std)) * (N * dx_hat - np.sum(dx_hat, axis=0, keepdims=True)
                              - x_hat * np.sum(dx_hat * x_hat, axis=0, keepdims=True))
    return dx, np.sum(dout * x_hat, axis=0), np.sum(dout, axis=0)


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer norm as batch norm on the transpose."""
    eps = ln_param.get("eps", 1e-5)
    xt = x.T
    mean = xt.mean(axis=0)
    var = xt.var(axis=0)
    std = np.sqrt(var + eps)
    x_hat = ((xt - mean) / std).T
    out = gamma * x_hat + beta
    return out, {"x_hat": x_hat, "std": std, "gamma": gamma}


def layernorm_backward(dout, cache):
    """The batch-norm closed form on the transpose."""
    x_hat, std, gamma = cache["x_hat"].T, cache["std"], cache["gamma"]
    dgamma = np.sum(dout * cache["x_hat"], axis=0)
    dbeta = np.sum(dout, axis=0)
    dx_hat = (dout * gamma).T
    dx = (dx_hat - dx_hat.mean(axis=0) - x_hat * (dx_hat * x_hat).mean(axis=0)) / std
    return dx.T, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Moves the channels last with np.moveaxis, then the file's batch norm."""
    N, C, H, W = x.shape
    out, cache = batchnorm_forward(np.moveaxis(x, 1, -1).reshape(-1, C), gamma, beta, bn_param)
    return np.moveaxis(out.reshape(N, H, W, C), -1, 1), cache


def spatial_batchnorm_backward(dout, cache):
    N, C, H, W = dout.shape
    dx, dgamma, dbeta = batchnorm_backward(np.moveaxis(dout, 1, -1).reshape(-1, C), cache)
    return np.moveaxis(dx.reshape(N, H, W, C), -1, 1), dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Groups as an extra axis: (N, G, C // G, H, W)."""
    eps = gn_param.get("eps", 1e-5)
    N, C, H, W = x.shape
    xg = x.reshape(N, G, C // G, H, W)
    mean = xg.mean(axis=(2, 3, 4), keepdims=True)
    var = xg.var(axis=(2, 3, 4), keepdims=True)
    std = np.sqrt(var + eps)
    x_hat = ((xg - mean) / std).reshape(N, C, H, W)
    out = gamma * x_hat + beta
    return out, {"x_hat": x_hat, "std": std, "gamma": gamma, "G": G}


def spatial_groupnorm_backward(dout, cache):
    x_hat, std, gamma, G = cache["x_hat"], cache["std"], cache["gamma"], cache["G"]
    N, C, H, W = dout.shape
    dgamma = np.sum(dout * x_hat, axis=(0, 2, 3), keepdims=True)
    dbeta = np.sum(dout, axis=(0, 2, 3), keepdims=True)
    dxh = (dout * gamma).reshape(N, G, C // G, H, W)
    xh = x_hat.reshape(N, G, C // G, H, W)
    dx = (dxh - dxh.mean(axis=(2, 3, 4), keepdims=True)
          - xh * (dxh * xh).mean(axis=(2, 3, 4), keepdims=True)) / std
    return dx.reshape(N, C, H, W), dgamma, dbeta
