"""Test students for each normalization bug pattern, as edits of the assignment's complete
student (`assignment/complete.py`): one slip each, on the line marked `# SLIP`.

PATTERNS maps a pattern to (the function judged, the text replaced, its replacement with the
`# SLIP` marker, the status the checker must give, words its reason must hold). Each
replacement is written here after the bugs seen in real students' files; none is copied.
"""

PATTERNS = {
    "cache unpacked in the wrong order": (
        "batchnorm_backward",
        "    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache\n    N, D = dout.shape",
        "    xhat, xmu, gamma, ivar, sqrtvar, var, eps = cache  # SLIP\n    N, D = dout.shape",
        "fail", "`gamma` holds what xmu should"),
    "np.sum without an axis": (
        "batchnorm_backward_alt",
        "dx = ivar / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))",
        "dx = ivar / N * (N * dxhat - np.sum(dxhat) - xhat * (dxhat * xhat).sum(axis=0))  # SLIP",
        "fail", "without an axis adds all 20 entries into one number"),
    "running statistics overwritten by stale locals": (
        "batchnorm_forward",
        "        running_mean = momentum * running_mean + (1 - momentum) * mu\n"
        "        running_var = momentum * running_var + (1 - momentum) * var\n",
        "        bn_param['running_mean'] = momentum * running_mean + (1 - momentum) * mu\n"
        "        bn_param['running_var'] = momentum * running_var + (1 - momentum) * var\n"
        "        bn_param['running_mean'] = running_mean  # SLIP\n"
        "        bn_param['running_var'] = running_var\n"
        "        return out, cache\n",
        "fail", "still holds the value bn_param had before the step"),
    "spatial dividing by N instead of N*H*W": (
        "spatial_batchnorm_backward",
        "    dx_rows, dgamma, dbeta = batchnorm_backward_alt(dout_rows, cache)\n",
        "    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache\n"
        "    dbeta = dout_rows.sum(axis=0)\n"
        "    dgamma = (dout_rows * xhat).sum(axis=0)\n"
        "    dxhat = dout_rows * gamma\n"
        "    count = N  # SLIP\n"
        "    dx_rows = (count * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) "
        "* ivar / count\n",
        "fail", "N = 3 where N*H*W = 60 belongs"),
    "layer norm with N where D belongs": (
        "layernorm_backward",
        "    D = dout.shape[1]\n",
        "    D = len(dout)  # SLIP\n",
        "fail", "N = 4 where D = 5 belongs"),
    "only one of the two sums over axis 0": (
        "batchnorm_backward_alt",
        "dx = ivar / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))",
        "dx = ivar / N * (N * dxhat - dxhat - xhat * (dxhat * xhat).sum(axis=0))  # SLIP",
        "fail", "the sum of dxhat over the batch left out"),
    "std where var belongs in dvar": (
        "batchnorm_backward",
        "    dvar = 0.5 * 1.0 / np.sqrt(var + eps) * dsqrtvar\n",
        "    dvar = -0.5 * divar * (sqrtvar + eps) ** -1.5  # SLIP\n",
        "fail", "the standard deviation where the variance belongs"),
    "running var updated with std": (
        "batchnorm_forward",
        "        running_var = momentum * running_var + (1 - momentum) * var\n",
        "        running_var = momentum * running_var + (1 - momentum) * np.sqrt(var)  # SLIP\n",
        "fail", "running variance updated with the standard deviation"),
    "instance-norm statistics": (
        "spatial_groupnorm_forward",
        "    groups = x.reshape(N, G, -1)\n",
        "    groups = x.reshape(N, C, -1)\n"
        "    mu = x.mean(axis=(2, 3), keepdims=True)  # SLIP\n"
        "    var = x.var(axis=(2, 3), keepdims=True)\n"
        "    xhat = (x - mu) / np.sqrt(var + eps)\n"
        "    return gamma * xhat + beta, (xhat, gamma, 1.0 / np.sqrt(var + eps), G)\n",
        "fail", "statistics over H and W only"),
    "instance statistics in spatial batch norm through the 2-D helper": (
        "spatial_batchnorm_forward",
        "    x_rows = x.transpose(0, 2, 3, 1).reshape(-1, C)\n"
        "    out_rows, cache = batchnorm_forward(x_rows, gamma, beta, bn_param)\n"
        "    out = out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)\n",
        "    x_rows = x.reshape(N * C, H * W).T  # SLIP\n"
        "    out_rows, cache = batchnorm_forward(x_rows, np.tile(gamma, N), np.tile(beta, N),\n"
        "                                        bn_param)\n"
        "    out = out_rows.T.reshape(N, C, H, W)\n",
        "fail", "statistics over H and W only"),
    "beta added before scaling": (
        "layernorm_forward",
        "    out = gamma * xhat + beta\n    cache = (xhat, gamma, ivar)\n",
        "    out = (xhat + beta) * gamma  # SLIP\n    cache = (xhat, gamma, ivar)\n",
        "fail", "beta added before the scaling"),
    "eps outside the sqrt in dvar": (
        "batchnorm_backward",
        "    dvar = 0.5 * 1.0 / np.sqrt(var + eps) * dsqrtvar\n",
        "    dvar = 0.5 / (np.sqrt(var) + eps) * dsqrtvar  # SLIP\n",
        "fail", "eps outside the square root in dvar"),
    "group norm per-pixel reshape": (
        "spatial_groupnorm_forward",
        "    groups = x.reshape(N, G, -1)\n",
        "    groups = x.transpose(0, 2, 3, 1).reshape(N, H * W, G, -1)  # SLIP\n"
        "    mu = groups.mean(axis=3, keepdims=True)\n"
        "    var = groups.var(axis=3, keepdims=True)\n"
        "    ivar = 1.0 / np.sqrt(var + eps)\n"
        "    xhat = ((groups - mu) * ivar).reshape(N, H, W, C).transpose(0, 3, 1, 2)\n"
        "    out = gamma * xhat + beta\n"
        "    return out, (xhat, gamma, ivar, G)\n",
        "fail", "statistics over the group's channels only"),
    "group norm per pixel through a helper, gathered by concatenate": (
        "spatial_groupnorm_forward",
        "    groups = x.reshape(N, G, -1)\n",
        "    size = C // G\n"
        "    outs = []\n"
        "    for g in range(G):\n"
        "        rows = x[:, g * size:(g + 1) * size].transpose(0, 2, 3, 1).reshape(-1, size)"
        "  # SLIP\n"
        "        part, _ = layernorm_forward(rows, gamma[0, g * size:(g + 1) * size, 0, 0],\n"
        "                                    beta[0, g * size:(g + 1) * size, 0, 0], gn_param)\n"
        "        outs.append(part.reshape(N, H, W, size).transpose(0, 3, 1, 2))\n"
        "    out = np.concatenate(outs, axis=1)\n"
        "    return out, (None, gamma, None, G)\n",
        "fail", "x's values laid out in shape (24, 2) for the helper"),
    "crash inside numpy": (
        "layernorm_forward",
        "    xmu = x - mu\n    var = np.mean(xmu ** 2, axis=1, keepdims=True)\n",
        "    xmu = x - mu\n    var = np.mean(xmu ** 2, axis=2, keepdims=True)  # SLIP\n",
        "error", "in layernorm_forward"),
    "assert False stub": (
        "layernorm_backward",
        "    xhat, gamma, ivar = cache\n    D = dout.shape[1]\n",
        "    assert False, \"TODO\"  # SLIP\n    D = dout.shape[1]\n",
        "not implemented", "assert False"),
    "backward error from its forward": (
        "layernorm_backward",
        "    xmu = x - mu\n    var = np.mean(xmu ** 2, axis=1, keepdims=True)\n",
        "    xmu = x - mu\n    var = np.mean(xmu ** 2, axis=2, keepdims=True)  # SLIP\n",
        "error", "its forward layernorm_forward"),
}

# Departures no catalogue entry explains, and the words the checker still finds for them:
# (function, replaced text, replacement with `# SLIP`, words).
UNNAMED = {
    "a mean without an axis in a closed form": (
        "batchnorm_backward_alt",
        "dx = ivar / N * (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))",
        "dx = ivar / N * (N * dxhat - N * dxhat.mean() - xhat * (dxhat * xhat).sum(axis=0) ** 2)"
        "  # SLIP",
        "looks like `dxhat.mean()` on this line has no axis"),
}
