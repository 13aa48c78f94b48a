"""Correct code with habits real students have: (1, D) running statistics from keepdims, a
float64 output for float32 input (np.zeros(x.shape)), lists for tuples, a course import
normalization does not need, camelCase names, layer norm done on x.T."""

import numpy as np
from cs231n.im2col import *  # noqa: F403  (the course's module; not needed here)


def batchnormForward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps, momentum = bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    D = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros((1, D)))
    running_var = bn_param.get("running_var", np.zeros((1, D)))
    out = np.zeros(x.shape)
    cache = None
    if mode == "train":
        mean = np.mean(x, axis=0, keepdims=True)
        variance = np.var(x, axis=0, keepdims=True)
        x_norm = (x - mean) / np.sqrt(variance + eps)
        out[:] = gamma * x_norm + beta
        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var = momentum * running_var + (1 - momentum) * variance
        cache = [x_norm, gamma, variance, eps]
    else:
        out[:] = gamma * (x - running_mean.reshape(1, -1)) / np.sqrt(
            running_var.reshape(1, -1) + eps) + beta
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return [out, cache]


def batchnorm_backward_alt(dout, cache):
    x_norm, gamma, variance, eps = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_norm).sum(axis=0)
    dx_norm = dout * gamma
    dx = (N * dx_norm - dx_norm.sum(axis=0) - x_norm * (dx_norm * x_norm).sum(axis=0)) / (
        N * np.sqrt(variance + eps))
    return [dx, dgamma, dbeta]


def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    xt = x.T
    mu = xt.mean(axis=0)
    xc = xt - mu
    var = (xc ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    x_hat = (xc / std).T
    out = gamma * x_hat + beta
    return out, (x_hat, gamma, std)


def layernorm_backward(dout, cache):
    x_hat, gamma, std = cache
    D = dout.shape[1]
    dgamma = np.sum(dout * x_hat, axis=0)
    dbeta = np.sum(dout, axis=0)
    dx_hat = (dout * gamma).T
    xt_hat = x_hat.T
    dx = (D * dx_hat - dx_hat.sum(axis=0) - xt_hat * (dx_hat * xt_hat).sum(axis=0)) / (D * std)
    return dx.T, dgamma, dbeta
