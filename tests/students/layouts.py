"""Correct code in layouts real students choose: running statistics kept as (1, C, 1, 1)
from the first train step on and used as they are in test mode; layer norm computed on
x.T, its dx made transposed and turned back on a line of its own."""

import numpy as np


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    C = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros((1, C, 1, 1)))
    running_var = bn_param.get("running_var", np.zeros((1, C, 1, 1)))
    g = gamma.reshape(1, C, 1, 1)
    b = beta.reshape(1, C, 1, 1)
    cache = None
    if mode == "train":
        m = x.mean(axis=(0, 2, 3), keepdims=True)
        v = ((x - m) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        scale = 1.0 / np.sqrt(v + eps)
        normed = (x - m) * scale
        out = g * normed + b
        running_mean = momentum * running_mean + (1 - momentum) * m
        running_var = momentum * running_var + (1 - momentum) * v
        cache = (normed, g, scale)
    else:
        out = g * (x - running_mean) / np.sqrt(running_var + eps) + b
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def spatial_batchnorm_backward(dout, cache):
    normed, g, scale = cache
    count = dout.shape[0] * dout.shape[2] * dout.shape[3]
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * normed).sum(axis=(0, 2, 3))
    dnormed = dout * g
    dx = scale / count * (count * dnormed - dnormed.sum(axis=(0, 2, 3), keepdims=True)
                          - normed * (dnormed * normed).sum(axis=(0, 2, 3), keepdims=True))
    return dx, dgamma, dbeta


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    cols = x.T
    centre = cols - cols.mean(axis=0)
    spread = np.sqrt((centre ** 2).mean(axis=0) + eps)
    x_hat = (centre / spread).T
    out = gamma * x_hat + beta
    return out, (centre, spread, gamma, x_hat)


def layernorm_backward(dout, cache):
    centre, spread, gamma, x_hat = cache
    D = dout.shape[1]
    dgamma = (dout * x_hat).sum(axis=0)
    dbeta = dout.sum(axis=0)
    g_t = (dout * gamma).T
    dx_T = (g_t / spread
            - (g_t * centre).sum(axis=0) * centre / spread ** 3 / D
            - g_t.sum(axis=0) / (spread * D))
    dx = dx_T.T
    return dx, dgamma, dbeta
