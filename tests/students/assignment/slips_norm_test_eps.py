"""Batch norm slip in test mode: eps added outside the square root of the running variance (spatial batch norm calls this batch norm)."""

import numpy as np


def affine_forward(x, w, b):
    """
    Inputs:
    - x: A numpy array containing input data, of shape (N, d_1, ..., d_k)
    - w: A numpy array of weights, of shape (D, M)
    - b: A numpy array of biases, of shape (M,)

    Returns a tuple of:
    - out: output, of shape (N, M)
    - cache: (x, w, b)
    """
    out = None
    x_rows = x.reshape(x.shape[0], -1)
    out = x_rows.dot(w) + b
    cache = (x, w, b)
    return out, cache


def affine_backward(dout, cache):
    """
    Inputs:
    - dout: Upstream derivative, of shape (N, M)
    - cache: Tuple of x, w, b

    Returns a tuple of dx (N, d1, ..., d_k), dw (D, M), db (M,)
    """
    x, w, b = cache
    dx, dw, db = None, None, None
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def relu_forward(x):
    """Input x of any shape; returns out (same shape) and cache x."""
    out = None
    out = np.maximum(0, x)
    cache = x
    return out, cache


def relu_backward(dout, cache):
    """Upstream dout of any shape and cache x; returns dx."""
    dx, x = None, cache
    dx = dout * (x > 0)
    return dx


def dropout_forward(x, dropout_param):
    """
    Performs the forward pass for (inverted) dropout.

    Inputs:
    - x: Input data, of any shape
    - dropout_param: A dictionary with the following keys:
      - p: Dropout parameter. We keep each neuron output with probability p.
      - mode: 'test' or 'train'.
      - seed: Seed for the random number generator.

    Outputs:
    - out: Array of the same shape as x.
    - cache: tuple (dropout_param, mask).
    """
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    out = None
    if mode == "train":
        mask = (np.random.rand(*x.shape) < p) / p
        out = x * mask
    elif mode == "test":
        out = x
    cache = (dropout_param, mask)
    out = out.astype(x.dtype, copy=False)
    return out, cache


def dropout_backward(dout, cache):
    """dout of any shape, cache (dropout_param, mask); returns dx."""
    dropout_param, mask = cache
    mode = dropout_param["mode"]
    dx = None
    if mode == "train":
        dx = dout * mask
    elif mode == "test":
        dx = dout
    return dx


def conv_forward_naive(x, w, b, conv_param):
    """
    Input x (N, C, H, W), filters w (F, C, HH, WW), biases b (F,), conv_param with 'stride'
    and 'pad'. Returns out (N, F, H', W') with H' = 1 + (H + 2 * pad - HH) / stride,
    W' = 1 + (W + 2 * pad - WW) / stride, and cache (x, w, b, conv_param).
    """
    out = None
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    H_out = 1 + (H + 2 * pad - HH) // stride
    W_out = 1 + (W + 2 * pad - WW) // stride
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    out = np.zeros((N, F, H_out, W_out))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    window = x_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    cache = (x, w, b, conv_param)
    return out, cache


def conv_backward_naive(dout, cache):
    """dout (N, F, H', W'), cache (x, w, b, conv_param); returns dx, dw, db."""
    dx, dw, db = None, None, None
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    _, _, H_out, W_out = dout.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    db = np.sum(dout, axis=(0, 2, 3))
    for n in range(N):
        for f in range(F):
            for i in range(H_out):
                for j in range(W_out):
                    rows = slice(i * stride, i * stride + HH)
                    cols = slice(j * stride, j * stride + WW)
                    dw[f] += x_pad[n, :, rows, cols] * dout[n, f, i, j]
                    dx_pad[n, :, rows, cols] += w[f] * dout[n, f, i, j]
    dx = dx_pad[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


def max_pool_forward_naive(x, pool_param):
    """x (N, C, H, W), pool_param with 'pool_height', 'pool_width', 'stride'; returns out
    (N, C, H', W') with H' = 1 + (H - pool_height) / stride and cache (x, pool_param)."""
    out = None
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out = 1 + (H - ph) // stride
    W_out = 1 + (W - pw) // stride
    out = np.zeros((N, C, H_out, W_out))
    for i in range(H_out):
        for j in range(W_out):
            window = x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw]
            out[:, :, i, j] = np.max(window, axis=(2, 3))
    cache = (x, pool_param)
    return out, cache


def max_pool_backward_naive(dout, cache):
    """dout (N, C, H', W'), cache (x, pool_param); returns dx (N, C, H, W)."""
    dx = None
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
                    r, s = np.unravel_index(np.argmax(window), window.shape)
                    dx[n, c, i * stride + r, j * stride + s] += dout[n, c, i, j]
    return dx


def svm_loss(x, y):
    """Scores x (N, C), labels y (N,); returns the multiclass SVM loss and dx."""
    N = x.shape[0]
    correct = x[np.arange(N), y]
    margins = np.maximum(0, x - correct[:, None] + 1.0)
    margins[np.arange(N), y] = 0
    loss = np.sum(margins) / N
    positive = (margins > 0).astype(x.dtype)
    positive[np.arange(N), y] = -np.sum(positive, axis=1)
    dx = positive / N
    return loss, dx


def softmax_loss(x, y):
    """Scores x (N, C), labels y (N,); returns the softmax (cross-entropy) loss and dx."""
    N = x.shape[0]
    shifted = x - np.max(x, axis=1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    probs = np.exp(log_probs)
    loss = -np.sum(log_probs[np.arange(N), y]) / N
    dx = probs.copy()
    dx[np.arange(N), y] -= 1
    dx /= N
    return loss, dx


def batchnorm_forward(x, gamma, beta, bn_param):
    """x (N, D), gamma and beta (D,), bn_param with 'mode', 'eps', 'momentum' and the running
    statistics; returns out (N, D) and cache."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    out, cache = None, None
    if mode == "train":
        mu = x.mean(axis=0)
        xmu = x - mu
        var = np.mean(xmu ** 2, axis=0)
        sqrtvar = np.sqrt(var + eps)
        ivar = 1.0 / sqrtvar
        xhat = xmu * ivar
        out = gamma * xhat + beta
        cache = (xhat, gamma, xmu, ivar, sqrtvar, var, eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    elif mode == "test":
        out = gamma * (x - running_mean) / (np.sqrt(running_var) + eps) + beta  # SLIP: eps outside the square root in test mode
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward(dout, cache):
    """dout (N, D) and the forward's cache; returns dx (N, D), dgamma (D,), dbeta (D,),
    through the computational graph, stage by stage."""
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, D = dout.shape
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / (sqrtvar ** 2) * divar
    dvar = 0.5 * 1.0 / np.sqrt(var + eps) * dsqrtvar
    dsq = 1.0 / N * np.ones((N, D)) * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=0)
    dx2 = 1.0 / N * np.ones((N, D)) * dmu
    dx = dx1 + dx2
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    """The same gradients in closed form."""
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = ivar / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    """x (N, D), gamma and beta (D,), ln_param with 'eps'; statistics per sample."""
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xmu = x - mu
    var = np.mean(xmu ** 2, axis=1, keepdims=True)
    ivar = 1.0 / np.sqrt(var + eps)
    xhat = xmu * ivar
    out = gamma * xhat + beta
    cache = (xhat, gamma, ivar)
    return out, cache


def layernorm_backward(dout, cache):
    """dout (N, D); returns dx (N, D), dgamma (D,), dbeta (D,)."""
    xhat, gamma, ivar = cache
    D = dout.shape[1]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = ivar / D * (D * dxhat - dxhat.sum(axis=1, keepdims=True)
                     - xhat * (dxhat * xhat).sum(axis=1, keepdims=True))
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """x (N, C, H, W), gamma and beta (C,); batch norm per channel over N, H and W."""
    N, C, H, W = x.shape
    x_rows = x.transpose(0, 2, 3, 1).reshape(-1, C)
    out_rows, cache = batchnorm_forward(x_rows, gamma, beta, bn_param)
    out = out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return out, cache


def spatial_batchnorm_backward(dout, cache):
    """dout (N, C, H, W); returns dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    N, C, H, W = dout.shape
    dout_rows = dout.transpose(0, 2, 3, 1).reshape(-1, C)
    dx_rows, dgamma, dbeta = batchnorm_backward_alt(dout_rows, cache)
    dx = dx_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return dx, dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """x (N, C, H, W), gamma and beta (1, C, 1, 1), G groups dividing C, gn_param with 'eps'."""
    eps = gn_param.get("eps", 1e-5)
    N, C, H, W = x.shape
    groups = x.reshape(N, G, -1)
    mu = groups.mean(axis=2, keepdims=True)
    var = groups.var(axis=2, keepdims=True)
    ivar = 1.0 / np.sqrt(var + eps)
    xhat = ((groups - mu) * ivar).reshape(N, C, H, W)
    out = gamma * xhat + beta
    cache = (xhat, gamma, ivar, G)
    return out, cache


def spatial_groupnorm_backward(dout, cache):
    """dout (N, C, H, W); returns dx (N, C, H, W), dgamma and dbeta (1, C, 1, 1)."""
    xhat, gamma, ivar, G = cache
    N, C, H, W = dout.shape
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dxhat = (dout * gamma).reshape(N, G, -1)
    xhat_g = xhat.reshape(N, G, -1)
    M = dxhat.shape[2]
    dx = ivar / M * (M * dxhat - dxhat.sum(axis=2, keepdims=True)
                     - xhat_g * (dxhat * xhat_g).sum(axis=2, keepdims=True))
    return dx.reshape(N, C, H, W), dgamma, dbeta
