"""The ground truth of the assignment's students in this folder, as data.

FILES maps each student file to what it is ("about") and, for every function of the
assignment (FUNCTIONS), what a checker must find. Only what differs from a plain pass is
written below (DEPARTURES); every other function of a file passes:
- verdict: "pass", "fail" (wrong values or shapes on valid inputs), "error" (raises on valid
  inputs) or "not implemented" (the template's stub);
- slip: the name of the bug pattern ("" when none); "from-the-forward" when the function's own
  code is right but a slip in the forward reaches it through the cache or a call;
- reason: one sentence a student understands;
- marker: the text of the comment on the line where the math departs (found by text); the line
  is in the function itself, or in `marker_in` when the slip is in another function;
- note: what a passing function does that a checker must tolerate.

Verdicts were derived without the project, against torch and central differences
(tests/check/test_assignment_ground_truth.py).
"""

FUNCTIONS = (
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "dropout_forward",
    "dropout_backward",
    "conv_forward_naive",
    "conv_backward_naive",
    "max_pool_forward_naive",
    "max_pool_backward_naive",
    "svm_loss",
    "softmax_loss",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "layernorm_forward",
    "layernorm_backward",
    "spatial_batchnorm_forward",
    "spatial_batchnorm_backward",
    "spatial_groupnorm_forward",
    "spatial_groupnorm_backward",
)


DEPARTURES = {
    "complete.py": {
        "about": "Every function right, the plain way (tuple caches, loops, keep-probability dropout).",
        "functions": {},
    },
    "habits_vectorized.py": {
        "about": "Right: dict caches, im2col and einsum, argmax caches, keepdims, binomial dropout.",
        "functions": {},
    },
    "habits_loops.py": {
        "about": "Right: loops, float32 arithmetic, other cache orders, equality-mask pooling split over ties.",
        "functions": {},
    },
    "habits_old_dropout.py": {
        "about": "Right, as written in 2016-2017: the template's docstring then said p is the probability of DROPPING a unit, and this file follows its docstring (keep with probability 1 - p, scale by 1 / (1 - p)). Layer and group norm did not exist yet and batchnorm_backward_alt was optional: their template stubs are left as they were (not implemented).",
        "functions": {
            "dropout_forward": {
                "verdict": "pass",
                "note": "p is the drop probability, as its docstring says",
            },
            "dropout_backward": {
                "verdict": "pass",
                "note": "p is the drop probability, as its docstring says",
            },
            "batchnorm_backward_alt": {
                "verdict": "not implemented",
                "reason": "The template's body is still there.",
            },
            "layernorm_forward": {
                "verdict": "not implemented",
                "reason": "The template's body is still there.",
            },
            "layernorm_backward": {
                "verdict": "not implemented",
                "reason": "The template's body is still there.",
            },
            "spatial_groupnorm_forward": {
                "verdict": "not implemented",
                "reason": "The template's body is still there.",
            },
            "spatial_groupnorm_backward": {
                "verdict": "not implemented",
                "reason": "The template's body is still there.",
            },
        },
    },
    "habits_inplace.py": {
        "about": "Right, but writing into its own arguments, as many students do: relu and dropout backward zero and scale dout in place and return it, softmax shifts x in place. Each result is right; a checker that hands these functions copies sees no difference.",
        "functions": {
            "relu_backward": {
                "verdict": "pass",
                "note": "writes into dout (harmless to its own result)",
            },
            "dropout_backward": {
                "verdict": "pass",
                "note": "writes into dout (harmless to its own result)",
            },
            "softmax_loss": {
                "verdict": "pass",
                "note": "writes into x (harmless to its own result)",
            },
        },
    },
    "slips_max_pool.py": {
        "about": "Max pool slips: assigning at the argmax where overlapping windows should add, and the output width computed from the pool's height.",
        "functions": {
            "max_pool_forward_naive": {
                "verdict": "fail",
                "slip": "pool-width-from-height",
                "marker": "# SLIP: the output width computed from the pool height",
                "reason": "The output width must use pool_width; using pool_height is only right for square pools.",
            },
            "max_pool_backward_naive": {
                "verdict": "fail",
                "slip": "pool-assign-overlap",
                "marker": "# SLIP: assigns instead of adding where windows overlap",
                "reason": "When pooling windows overlap, one input can be the maximum of several windows and must receive the sum of their upstream gradients; '=' keeps only the last window's.",
            },
        },
    },
    "slips_max_pool_window.py": {
        "about": "Max pool slip: the whole window assigned, so its zeros overwrite what an overlapping window gave.",
        "functions": {
            "max_pool_backward_naive": {
                "verdict": "fail",
                "slip": "pool-assign-window",
                "marker": "# SLIP: assigns the whole window, overwriting the overlap",
                "reason": "Writing the whole window with '=' puts zeros over the gradients an earlier overlapping window gave to its maximum; add the gradient at the maximum instead.",
            },
        },
    },
    "slips_max_pool_shape.py": {
        "about": "Max pool slip: the output shape with height and width swapped; the forward crashes on non-square outputs, so its backward cannot run either.",
        "functions": {
            "max_pool_forward_naive": {
                "verdict": "error",
                "slip": "pool-shape-swapped",
                "marker": "# SLIP: height and width swapped in the output shape",
                "reason": "The output is (N, C, H_out, W_out); with the two swapped it only works when the output is square.",
            },
            "max_pool_backward_naive": {
                "verdict": "error",
                "slip": "from-the-forward",
                "marker_in": "max_pool_forward_naive",
                "marker": "# SLIP: height and width swapped in the output shape",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The output is (N, C, H_out, W_out); with the two swapped it only works when the output is square.)",
            },
        },
    },
    "slips_conv_pad.py": {
        "about": "Conv slips: un-padding by pad:-pad (empty when pad is 0), and the output width computed from the image height.",
        "functions": {
            "conv_forward_naive": {
                "verdict": "fail",
                "slip": "conv-width-from-height",
                "marker": "# SLIP: the output width computed from the image height",
                "reason": "The output width must use the input width W; using H is only right for square images.",
            },
            "conv_backward_naive": {
                "verdict": "fail",
                "slip": "conv-unpad-negative",
                "marker": "# SLIP: pad:-pad is empty when pad is 0",
                "reason": "With pad = 0 the slice pad:-pad is 0:0, which is empty; slice pad:pad + H and pad:pad + W instead.",
            },
        },
    },
    "slips_conv_stride.py": {
        "about": "Conv slips: windows that ignore the stride, and output sizes by true division (a Python 2 habit: the size is a float).",
        "functions": {
            "conv_forward_naive": {
                "verdict": "fail",
                "slip": "conv-stride-ignored",
                "marker": "# SLIP: windows start at i and j, not i * stride and j * stride",
                "reason": "Output pixel (i, j) reads the window starting at (i * stride, j * stride); without the stride it is only right for stride 1.",
            },
            "conv_backward_naive": {
                "verdict": "error",
                "slip": "size-float-division",
                "marker": "# SLIP: true division makes the output height a float",
                "reason": "In Python 3, '/' gives a float even when it divides exactly, and range() refuses a float: use '//' (or int()) for sizes.",
            },
        },
    },
    "slips_conv_window.py": {
        "about": "Conv slip: the window's width taken from the filter's height; the forward crashes on non-square filters, so its backward cannot run either.",
        "functions": {
            "conv_forward_naive": {
                "verdict": "error",
                "slip": "conv-window-square",
                "marker": "# SLIP: the window's width taken from the filter's height",
                "reason": "The window is HH rows by WW columns; slicing HH columns only matches the filter when it is square.",
            },
            "conv_backward_naive": {
                "verdict": "error",
                "slip": "from-the-forward",
                "marker_in": "conv_forward_naive",
                "marker": "# SLIP: the window's width taken from the filter's height",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The window is HH rows by WW columns; slicing HH columns only matches the filter when it is square.)",
            },
        },
    },
    "slips_conv_dw.py": {
        "about": "Conv slip: dw assigned where it should add over positions and images.",
        "functions": {
            "conv_backward_naive": {
                "verdict": "fail",
                "slip": "conv-dw-assign",
                "marker": "# SLIP: assigns dw instead of adding over positions and images",
                "reason": "Each filter weight is used at every output position of every image, so its gradient is the sum of all those contributions; '=' keeps only the last one.",
            },
        },
    },
    "slips_dropout_keep.py": {
        "about": "Dropout slips under the keep-probability docstring: keeping units with probability 1 - p, and a backward dividing by p again.",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-keep-inverted",
                "marker": "# SLIP: keeps units with probability 1 - p",
                "reason": "This file's docstring says p is the probability of keeping a unit, but the mask keeps a unit with probability 1 - p (p used as the drop probability).",
            },
            "dropout_backward": {
                "verdict": "fail",
                "slip": "dropout-backward-double-scale",
                "marker": "# SLIP: divides by p a second time",
                "reason": "The mask stored in the cache already holds the 1/p scaling, so the backward is just dout * mask; dividing by p again scales the gradient twice.",
            },
        },
    },
    "slips_dropout_unscaled.py": {
        "about": "Dropout slip: a 0/1 mask without the 1/p of inverted dropout (the backward, consistent with its own mask, is right).",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-unscaled",
                "marker": "# SLIP: a 0/1 mask, kept units not scaled by 1/p",
                "reason": "Inverted dropout divides the kept units by p so the expected output equals the input; a plain 0/1 mask makes training outputs smaller than test outputs by a factor p.",
            },
        },
    },
    "slips_dropout_batch.py": {
        "about": "Dropout slip: one mask of shape (1, D) shared by every sample of the batch.",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-batch-mask",
                "marker": "# SLIP: one mask shared by every sample",
                "reason": "Each unit of each sample is dropped independently; a mask of shape (1, D) drops the same units in every sample of the batch.",
            },
        },
    },
    "slips_affine_relu.py": {
        "about": "Affine and relu slips: dx left in the (N, D) shape of the flattened input, and relu's mask taken from dout.",
        "functions": {
            "affine_backward": {
                "verdict": "fail",
                "slip": "affine-dx-not-reshaped",
                "marker": "# SLIP: dx left as (N, D), not reshaped back to x's shape",
                "reason": "x may have any number of dimensions (N, d_1, ..., d_k); dx must have x's shape, so the (N, D) product has to be reshaped back.",
            },
            "relu_backward": {
                "verdict": "fail",
                "slip": "relu-mask-from-dout",
                "marker": "# SLIP: the mask taken from dout, not from the input x",
                "reason": "ReLU passes the gradient where its input x was positive; the sign of dout says nothing about that.",
            },
        },
    },
    "slips_sums.py": {
        "about": "Slips of sums: db without an axis (a scalar), the SVM loss counting the correct class's own margin, softmax dx not divided by N.",
        "functions": {
            "affine_backward": {
                "verdict": "fail",
                "slip": "sum-without-axis",
                "marker": "# SLIP: np.sum without an axis gives a scalar",
                "reason": "np.sum with no axis adds every entry into one number; db needs one value per output, the sum over axis 0.",
            },
            "svm_loss": {
                "verdict": "fail",
                "slip": "svm-correct-class-counted",
                "marker": "# SLIP: the correct class's own margin of 1 is counted",
                "reason": "The margin of the correct class against itself is always 1 and must be excluded (set to zero) before summing; here it adds 1 to the loss and an extra count to the correct class's gradient.",
            },
            "softmax_loss": {
                "verdict": "fail",
                "slip": "softmax-dx-not-averaged",
                "marker": "# SLIP: dx is not divided by N",
                "reason": "The loss is the mean over the N samples, so each sample's gradient is divided by N as well.",
            },
        },
    },
    "slips_losses.py": {
        "about": "Loss slips: softmax without the max shift (overflow for scores near 1000), the SVM loss summed instead of averaged.",
        "functions": {
            "svm_loss": {
                "verdict": "fail",
                "slip": "svm-loss-not-averaged",
                "marker": "# SLIP: the loss is summed over the samples, not averaged",
                "reason": "The data loss is the mean over the N samples; without dividing by N it is N times too large.",
            },
            "softmax_loss": {
                "verdict": "fail",
                "slip": "softmax-no-shift",
                "marker": "# SLIP: no max shift: exp overflows for large scores",
                "reason": "exp(1000) overflows to inf; subtracting each row's maximum first leaves the loss unchanged and keeps exp finite.",
            },
        },
    },
    "slips_norm.py": {
        "about": "Normalization slips: running variance updated with the std, the cache unpacked in another order, np.sum without an axis, N where D belongs in layer norm, spatial batch norm dividing by N, beta added inside the scaling, a group-norm dgamma missing keepdims.",
        "functions": {
            "batchnorm_forward": {
                "verdict": "fail",
                "slip": "running-var-with-std",
                "marker": "# SLIP: the running variance updated with the standard deviation",
                "reason": "The running variance is an average of variances; adding the standard deviation sqrt(var + eps) mixes two different quantities.",
            },
            "batchnorm_backward": {
                "verdict": "fail",
                "slip": "cache-order",
                "marker": "# SLIP: unpacked in another order than the forward packed",
                "reason": "The forward packs (xhat, gamma, xmu, ...); unpacking (xhat, xmu, gamma, ...) puts xmu into gamma and gamma into xmu.",
            },
            "batchnorm_backward_alt": {
                "verdict": "fail",
                "slip": "sum-without-axis",
                "marker": "# SLIP: np.sum without an axis sums over every feature too",
                "reason": "np.sum with no axis adds all N * D entries into one number; the formula needs one sum per feature, over axis 0.",
            },
            "layernorm_backward": {
                "verdict": "fail",
                "slip": "layernorm-n-for-d",
                "marker": "# SLIP: the number of samples N where the number of features D belongs",
                "reason": "Layer norm averages over the D features of each sample, so its backward divides by D, not by the batch size N.",
            },
            "spatial_batchnorm_forward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: the running variance updated with the standard deviation",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The running variance is an average of variances; adding the standard deviation sqrt(var + eps) mixes two different quantities.)",
            },
            "spatial_batchnorm_backward": {
                "verdict": "fail",
                "slip": "spatial-divides-by-n",
                "marker": "# SLIP: N samples, but each channel averages N * H * W values",
                "reason": "Spatial batch norm's statistics average over N * H * W values per channel; the closed form must divide by that count, not by N.",
            },
            "spatial_groupnorm_forward": {
                "verdict": "fail",
                "slip": "beta-inside-scaling",
                "marker": "# SLIP: beta added inside the scaling",
                "reason": "The layer's output is gamma * xhat + beta; adding beta before multiplying scales the shift by gamma as well.",
            },
            "spatial_groupnorm_backward": {
                "verdict": "fail",
                "slip": "gradient-shape",
                "marker": "# SLIP: dgamma summed without keepdims has shape (C,)",
                "reason": "gamma has shape (1, C, 1, 1), so dgamma must too; the values are right but the shape is not gamma's.",
            },
        },
    },
    "slips_norm_forward.py": {
        "about": "Normalization forward slips whose effect reaches the backward through the cache or a helper call: eps outside the square root in batch norm (spatial batch norm calls it), layer norm statistics over the batch axis.",
        "functions": {
            "batchnorm_forward": {
                "verdict": "fail",
                "slip": "eps-outside-sqrt",
                "marker": "# SLIP: eps added outside the square root",
                "reason": "The formula divides by sqrt(var + eps); sqrt(var) + eps differs by about eps / std, which matters when the variance is small.",
            },
            "batchnorm_backward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: eps added outside the square root",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The formula divides by sqrt(var + eps); sqrt(var) + eps differs by about eps / std, which matters when the variance is small.)",
            },
            "batchnorm_backward_alt": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: eps added outside the square root",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The formula divides by sqrt(var + eps); sqrt(var) + eps differs by about eps / std, which matters when the variance is small.)",
            },
            "layernorm_forward": {
                "verdict": "fail",
                "slip": "layernorm-batch-axis",
                "marker": "# SLIP: the mean taken over the batch (axis 0), not over each sample's features",
                "reason": "Layer norm normalizes each sample over its own features (axis 1); axis 0 is batch norm's mean.",
            },
            "layernorm_backward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "layernorm_forward",
                "marker": "# SLIP: the mean taken over the batch (axis 0), not over each sample's features",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (Layer norm normalizes each sample over its own features (axis 1); axis 0 is batch norm's mean.)",
            },
            "spatial_batchnorm_forward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: eps added outside the square root",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The formula divides by sqrt(var + eps); sqrt(var) + eps differs by about eps / std, which matters when the variance is small.)",
            },
            "spatial_batchnorm_backward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: eps added outside the square root",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (The formula divides by sqrt(var + eps); sqrt(var) + eps differs by about eps / std, which matters when the variance is small.)",
            },
        },
    },
    "slips_norm_staged.py": {
        "about": "Normalization slips on the staged path: running statistics overwritten by the stale local, the std where the variance belongs in dvar, one of the two batch sums missing, spatial batch norm reshaped without the transpose.",
        "functions": {
            "batchnorm_forward": {
                "verdict": "fail",
                "slip": "running-stats-overwritten",
                "marker": "# SLIP: overwrites the updated running statistics with the stale locals",
                "reason": "The running statistics are written into bn_param inside the train branch, then overwritten at the end by the old local values, so they never change.",
            },
            "batchnorm_backward": {
                "verdict": "fail",
                "slip": "dvar-std-for-var",
                "marker": "# SLIP: the standard deviation where the variance belongs",
                "reason": "d sqrt(v + eps) / dv = 0.5 / sqrt(var + eps); putting sqrtvar in place of var takes the square root twice.",
            },
            "batchnorm_backward_alt": {
                "verdict": "fail",
                "slip": "missing-batch-sum",
                "marker": "# SLIP: the second sum over the batch is missing",
                "reason": "Both correction terms of the closed form are sums over the batch (axis 0); the second, of dxhat * xhat, is used here without its sum.",
            },
            "spatial_batchnorm_forward": {
                "verdict": "fail",
                "slip": "spatial-reshape-no-transpose",
                "marker": "# SLIP: reshaped to (-1, C) without moving the channels last",
                "reason": "x is (N, C, H, W); reshaping it straight to (-1, C) mixes channels and pixels in every column: transpose the channels to the last axis first.",
            },
            "spatial_batchnorm_backward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "spatial_batchnorm_forward",
                "marker": "# SLIP: reshaped to (-1, C) without moving the channels last",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (x is (N, C, H, W); reshaping it straight to (-1, C) mixes channels and pixels in every column: transpose the channels to the last axis first.)",
            },
        },
    },
    "slips_dropout_mixed.py": {
        "about": "Dropout slip under the 2016-2017 drop-probability docstring: units kept with probability 1 - p, as the docstring says, but scaled by 1/p instead of 1/(1 - p).",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-mixed-scale",
                "marker": "# SLIP: keeps with probability 1 - p but scales by 1/p",
                "reason": "With p the drop probability (this file's docstring) a unit is kept with probability 1 - p, so the kept units must be divided by 1 - p, not by p.",
            },
        },
    },
    "slips_dropout_docstring.py": {
        "about": "Dropout that keeps units with probability p, while its own docstring (the 2016-2017 template's) says p is the probability of dropping one.",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-docstring-mismatch",
                "marker": "# SLIP: keeps with probability p though the docstring says p drops",
                "reason": "This file's docstring says p is the probability of dropping a unit, but the mask keeps a unit with probability p: code and docstring disagree (the 2016-2017 template said drop, later ones say keep).",
            },
        },
    },
    "slips_dropout_precedence.py": {
        "about": "Dropout slip: the scaling written inside the comparison, so rand < p / p compares with 1 and keeps every unit.",
        "functions": {
            "dropout_forward": {
                "verdict": "fail",
                "slip": "dropout-precedence",
                "marker": "# SLIP: p / p is computed before the comparison: every unit is kept",
                "reason": "Division binds tighter than '<', so this compares with p / p = 1 and keeps every unit; parenthesize the comparison and then divide by p.",
            },
        },
    },
    "slips_norm_test_mode.py": {
        "about": "Batch norm slip in test mode: the running statistics normalize, but gamma and beta are left out (spatial batch norm calls this batch norm).",
        "functions": {
            "batchnorm_forward": {
                "verdict": "fail",
                "slip": "test-mode-no-affine",
                "marker": "# SLIP: test mode leaves out gamma and beta",
                "reason": "At test time the layer still scales by gamma and shifts by beta; only the statistics change to the running ones.",
            },
            "spatial_batchnorm_forward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: test mode leaves out gamma and beta",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (At test time the layer still scales by gamma and shifts by beta; only the statistics change to the running ones.)",
            },
        },
    },
    "slips_norm_test_eps.py": {
        "about": "Batch norm slip in test mode: eps added outside the square root of the running variance (spatial batch norm calls this batch norm).",
        "functions": {
            "batchnorm_forward": {
                "verdict": "fail",
                "slip": "test-mode-eps-outside-sqrt",
                "marker": "# SLIP: eps outside the square root in test mode",
                "reason": "Test mode divides by sqrt(running_var + eps), as training divides by sqrt(var + eps); sqrt(running_var) + eps is a slightly different number, which matters when the variance is small.",
            },
            "spatial_batchnorm_forward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "batchnorm_forward",
                "marker": "# SLIP: eps outside the square root in test mode",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (Test mode divides by sqrt(running_var + eps), as training divides by sqrt(var + eps); sqrt(running_var) + eps is a slightly different number, which matters when the variance is small.)",
            },
        },
    },
    "slips_groupnorm_pixel.py": {
        "about": "Group norm slip: each group passed to layer norm as one row per pixel, so the statistics are over the C // G channels of a pixel instead of the whole group (C // G * H * W values). The backward is the right derivative of that forward.",
        "functions": {
            "spatial_groupnorm_forward": {
                "verdict": "fail",
                "slip": "groupnorm-per-pixel",
                "marker": "# SLIP: one row per pixel: statistics over C // G values, not the whole group",
                "reason": "A group's mean and variance are over all its channels and pixels of one sample; rows of one pixel each give every pixel its own statistics.",
            },
            "spatial_groupnorm_backward": {
                "verdict": "fail",
                "slip": "from-the-forward",
                "marker_in": "spatial_groupnorm_forward",
                "marker": "# SLIP: one row per pixel: statistics over C // G values, not the whole group",
                "reason": "Its result is wrong because the forward's slip flows into it (through the cache or a call): fix the forward first. (A group's mean and variance are over all its channels and pixels of one sample; rows of one pixel each give every pixel its own statistics.)",
            },
        },
    },
    "slips_max_pool_ties.py": {
        "about": "Max pool slip: an equality mask routes the whole gradient to every tied maximum of a window (windows of zeros after a ReLU tie all their entries).",
        "functions": {
            "max_pool_backward_naive": {
                "verdict": "fail",
                "slip": "pool-ties-duplicated",
                "marker": "# SLIP: every tied maximum receives the whole gradient",
                "reason": "When several entries of a window tie for the maximum, the window's gradient must go to one of them or be split evenly; the equality mask gives each of them all of it.",
            },
        },
    },
}


FILES = {
    file: {
        "about": entry["about"],
        "functions": {name: entry["functions"].get(name, {"verdict": "pass"}) for name in FUNCTIONS},
    }
    for file, entry in DEPARTURES.items()
}
