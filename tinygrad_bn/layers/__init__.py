"""Every other layer of the assignment staged, one named node per step (beside `norm`):

affine.py    rows = x.reshape(N, D); scores = rows @ w; out = scores + b
relu.py      out = max(x, 0)
dropout.py   out = x * mask (inverted dropout, the mask given)
conv.py      xpad = pad(x); windows (sliding, with the stride); cols @ wcols.T; + b
pool.py      windows (sliding, with the stride); out = max over each window
svm.py       correct = x[rows, y]; margins; mean over N
softmax.py   shifted = x - max; log-sum-exp; log_probs[rows, y]; mean over N

Each `*_staged` function returns its stage nodes by name; the backward pass is the engine's
ordinary one. The closed forms where the assignment has one sit beside them.
"""

from .affine import AFFINE_STAGES, affine_closed_form_backward, affine_staged
from .conv import CONV_STAGES, conv_output_size, conv_staged
from .dropout import DROPOUT_STAGES, dropout_closed_form_backward, dropout_mask, dropout_staged
from .inputs import check_labels
from .pool import POOL_STAGES, max_pool_staged
from .relu import RELU_STAGES, relu_closed_form_backward, relu_staged
from .softmax import SOFTMAX_STAGES, softmax_closed_form, softmax_staged
from .svm import SVM_STAGES, svm_closed_form, svm_staged

__all__ = ["AFFINE_STAGES", "affine_staged", "affine_closed_form_backward",
           "RELU_STAGES", "relu_staged", "relu_closed_form_backward",
           "DROPOUT_STAGES", "dropout_staged", "dropout_mask", "dropout_closed_form_backward",
           "CONV_STAGES", "conv_staged", "conv_output_size", "POOL_STAGES", "max_pool_staged",
           "SVM_STAGES", "svm_staged", "svm_closed_form",
           "SOFTMAX_STAGES", "softmax_staged", "softmax_closed_form",
           "check_labels"]
