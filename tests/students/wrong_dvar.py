"""Batch norm by the computational graph with one slip in the backward pass: dvar has
its sign flipped (d sqrt(v)/dv = 0.5 / sqrt(v), with no minus). The closed form beside it
is right."""

import numpy as np


def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    cache = None
    if mode == "train":
        mu = x.mean(axis=0)
        xmu = x - mu
        var = (xmu ** 2).mean(axis=0)
        sqrtvar = np.sqrt(var + eps)
        ivar = 1.0 / sqrtvar
        xhat = xmu * ivar
        out = gamma * xhat + beta
        cache = (xhat, gamma, xmu, ivar, sqrtvar, var, eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    elif mode == "test":
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    else:
        raise ValueError(f"Invalid forward batchnorm mode {mode}")
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgammax = dout
    dgamma = (dgammax * xhat).sum(axis=0)
    dxhat = dgammax * gamma
    divar = (dxhat * xmu).sum(axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar ** 2 * divar
    dvar = -0.5 / np.sqrt(var + eps) * dsqrtvar
    dsq = np.ones_like(dout) / N * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -(dxmu1 + dxmu2).sum(axis=0)
    dx2 = np.ones_like(dout) / N * dmu
    dx = dx1 + dx2
    return dx, dgamma, dbeta


def batchnorm_backward_alt(dout, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    dx = ivar / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, dgamma, dbeta
