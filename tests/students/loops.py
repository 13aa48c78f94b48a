"""Loops real students write, appended to complete.py (the later definitions win).

Group norm done one group at a time with the 2-D layer norm as the helper, right (each
sample's group as one row) and with the slip real files have (one row per pixel, so the
statistics cover the group's channels but not H and W); spatial batch norm done one
channel at a time with the 2-D batch norm, whose (N, H*W) rows leave H and W out; a group
norm backward still returning the template's placeholder dx; a layer norm closed form
with two slips in its two sums."""

import numpy as np

from complete import batchnorm_forward, layernorm_backward, layernorm_forward  # the 2-D helpers


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    N, C, H, W = x.shape
    size = C // G
    out = np.zeros_like(x)
    caches = []
    for g in range(G):
        part = slice(g * size, (g + 1) * size)
        rows = x[:, part].reshape(N, -1)
        scale = np.repeat(gamma.reshape(-1)[part], H * W)
        shift = np.repeat(beta.reshape(-1)[part], H * W)
        normed, group_cache = layernorm_forward(rows, scale, shift, gn_param)
        out[:, part] = normed.reshape(N, size, H, W)
        caches.append(group_cache)
    return out, (caches, x.shape, size)


def spatial_groupnorm_backward(dout, cache):
    caches, (N, C, H, W), size = cache
    dx = np.zeros_like(dout)
    dgamma = np.zeros((1, C, 1, 1))
    dbeta = np.zeros((1, C, 1, 1))
    for g, group_cache in enumerate(caches):
        part = slice(g * size, (g + 1) * size)
        d_rows, d_scale, d_shift = layernorm_backward(dout[:, part].reshape(N, -1), group_cache)
        dx[:, part] = d_rows.reshape(N, size, H, W)
        dgamma[0, part, 0, 0] = d_scale.reshape(size, H * W).sum(axis=1)
        dbeta[0, part, 0, 0] = d_shift.reshape(size, H * W).sum(axis=1)
    return dx, dgamma, dbeta


def groupnorm_forward_by_pixel(x, gamma, beta, G, gn_param):
    N, C, H, W = x.shape
    size = C // G
    out = np.zeros_like(x)
    caches = []
    for g in range(G):
        part = slice(g * size, (g + 1) * size)
        rows = x[:, part].transpose(0, 2, 3, 1).reshape(-1, size)
        normed, group_cache = layernorm_forward(rows, gamma.reshape(-1)[part], beta.reshape(-1)[part], gn_param)
        out[:, part] = normed.reshape(N, H, W, size).transpose(0, 3, 1, 2)
        caches.append(group_cache)
    return out, (caches, x.shape, size)


def groupnorm_backward_by_pixel(dout, cache):
    caches, (N, C, H, W), size = cache
    dx = np.zeros_like(dout)
    dgamma = np.zeros((1, C, 1, 1))
    dbeta = np.zeros((1, C, 1, 1))
    for g, group_cache in enumerate(caches):
        part = slice(g * size, (g + 1) * size)
        rows = dout[:, part].transpose(0, 2, 3, 1).reshape(-1, size)
        d_rows, d_scale, d_shift = layernorm_backward(rows, group_cache)
        dx[:, part] = d_rows.reshape(N, H, W, size).transpose(0, 3, 1, 2)
        dgamma[0, part, 0, 0] = d_scale
        dbeta[0, part, 0, 0] = d_shift
    return dx, dgamma, dbeta


def groupnorm_backward_placeholder(dout, cache):
    _, dgamma, dbeta = spatial_groupnorm_backward(dout, cache)
    dx = 0
    return dx, dgamma, dbeta


def batchnorm_forward_by_channel(x, gamma, beta, bn_param):
    N, C, H, W = x.shape
    out = np.zeros((N, C, H * W))
    caches = []
    for c in range(C):
        channel_param = dict(bn_param, running_mean=np.zeros(H * W), running_var=np.zeros(H * W))
        out[:, c], channel_cache = batchnorm_forward(x[:, c].reshape(N, H * W), gamma[c], beta[c], channel_param)
        caches.append(channel_cache)
    bn_param["running_mean"] = np.zeros(C)
    bn_param["running_var"] = np.zeros(C)
    return out.reshape(N, C, H, W), caches


def layernorm_backward_two_slips(dout, cache):
    x_norm, gamma, inv_std = cache
    D = x_norm.shape[1]
    dgamma = (dout * x_norm).sum(axis=0)
    dbeta = dout.sum(axis=0)
    dx = gamma * inv_std / D * (D * dout - dout.sum(axis=0) - x_norm * (dout * x_norm).sum(axis=1, keepdims=True))
    return dx, dgamma, dbeta
