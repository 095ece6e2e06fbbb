"""Integer codes shared by every backend (kernels select behaviour by code, not by callable)."""

# Activations
LINEAR = 0
RELU = 1
LEAKY_RELU = 2
SIGMOID = 3
TANH = 4
SOFTMAX = 5
ELU = 6  # alpha (exp(x) - 1) below 0; alpha from the layer (1.0 for the name "elu")
SELU = 7  # SELU_SCALE * elu(x, SELU_ALPHA)
GELU = 8  # x * Phi(x), the exact (erf) form: Keras's default approximate=False
SILU = 9  # x * sigmoid(x) (Keras's silu, alias swish)
SOFTPLUS = 10  # log(1 + exp(x))
N_ACTS = 11
#: Activations whose derivative is not a function of their output: their backward reads
#: the activation's input in place of its output (a Dense layer with one saves its
#: pre-activation at P_SAVE_OFF).
INPUT_ACTS = (GELU, SILU)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# Layer kinds in a compiled plan (Flatten and Input are views: they have no row)
DENSE = 0
DROPOUT = 1
ACTIVATION = 2
BATCHNORM = 3
NORMALIZATION = 4
CONV2D = 5
MAXPOOL2D = 6
AVGPOOL2D = 7
GLOBAL_AVGPOOL2D = 8
GLOBAL_MAXPOOL2D = 9
EMBEDDING = 10
SIMPLE_RNN = 11
LSTM = 12
GRU = 13
N_KINDS = 14

# Families of kinds.  The Numba backend runs every family but the core one in a function
# that takes the family's slot of the plan's kinds marker (``kinds_marker``): when the slot
# is None, Numba leaves the family's kernels out of the compiled training path, so a model
# does not pay compile time for kinds it does not use.
CORE = 0  # Dense, Dropout, Activation
NORM = 1  # BatchNormalization, Normalization
CONV = 2  # convolution and pooling
RNN = 3  # embedding and recurrent layers
#: Family of each kind, by kind code.
KIND_FAMILY = {
    DENSE: CORE, DROPOUT: CORE, ACTIVATION: CORE, BATCHNORM: NORM, NORMALIZATION: NORM,
    CONV2D: CONV, MAXPOOL2D: CONV, AVGPOOL2D: CONV, GLOBAL_AVGPOOL2D: CONV,
    GLOBAL_MAXPOOL2D: CONV, EMBEDDING: RNN, SIMPLE_RNN: RNN, LSTM: RNN, GRU: RNN,
}  # fmt: skip
#: Length of the kinds marker: room for the families to come.
FAMILY_SLOTS = 8

# The plan: an int64 table with one row per compiled layer (columns below) and a float64
# table (columns F_*), computed once per model and batch size by fastnn._plan.  Shapes are
# per sample, padded on the left with 1s to three dimensions; a layer that works on the
# last axis sees its input as (N * D0 * D1, D2) rows.  Offsets are element offsets into
# the buffer named in the comment; -1 means "none".
P_KIND = 0
P_ACT = 1  # activation applied to the output (Dense, Activation; LINEAR otherwise)
P_IN0, P_IN1, P_IN2 = 2, 3, 4  # input shape
P_OUT0, P_OUT1, P_OUT2 = 5, 6, 7  # output shape
P_IN_OFF = 8  # acts: the input (-1: the batch x itself)
P_OUT_OFF = 9  # acts: the output
P_SAVE_OFF = 10  # acts: tensors kept for the backward (BatchNormalization: mean, inv_std)
P_ACC_OFF = 11  # acc (float64 scratch): accumulators
P_W0, P_W1, P_W2 = 12, 13, 14  # params/grads: trainable weights (Dense: kernel, bias)
P_S0, P_S1 = 15, 16  # nontrain: non-trainable weights (moving mean, moving variance)
P_DOUT_OFF = 17  # gbuf: dL/d(output)
P_DX_OFF = 18  # gbuf: dL/d(input) (-1: not needed, the first layer with weights)
P_BACKWARD = 19  # 1 if this layer's backward runs (it or a layer before it has weights)
P_ARG0, P_ARG1, P_ARG2, P_ARG3, P_ARG4, P_ARG5 = 20, 21, 22, 23, 24, 25  # per-kind ints
P_FROZEN = P_ARG0  # BatchNormalization: 1 when frozen (trainable=False: inference mode)
# The CONV family (shapes (H, W, C) per sample, NHWC): the window's height and width, the
# strides and the padding before the first row and column (TensorFlow's "same": the odd
# extra row/column goes after the last one, where the kernels read zeros / skip it).
# Global pooling is the window (H, W) with strides 1 and no padding.  Conv2D: W0 is the
# kernel (KH, KW, C_in, F) = a (KH*KW*C_in, F) matrix, W1 the bias (F,), P_SAVE_OFF the
# im2col columns (N*H_out*W_out, KH*KW*C_in), overwritten by dL/dcols in the backward;
# max pooling: P_SAVE_OFF the window position (ky*KW + kx) of each output's maximum, as
# a float (N*H_out*W_out*C).
P_KH, P_KW, P_SH, P_SW, P_PAD_TOP, P_PAD_LEFT = P_ARG0, P_ARG1, P_ARG2, P_ARG3, P_ARG4, P_ARG5
# Embedding: input (1, 1, T) of token ids, output (1, T, E); W0 the (V, E) table.
P_VOCAB = P_ARG0  # Embedding: input_dim V (ids must lie in [0, V))
# SimpleRNN / LSTM / GRU: input (1, T, F), output (1, T, U) with return_sequences else
# (1, 1, U); W0 kernel (F, G), W1 recurrent kernel (U, G), W2 bias (G,) (GRU: (2, G)),
# G = U, 4U (gates i, f, c, o) or 3U (gates z, r, h); P_ACT is the activation; P_SAVE_OFF
# the workspace in acts (layout: rnn_layout in reference.py).
P_RETURN_SEQ = P_ARG0  # 1 with return_sequences
P_UNITS = P_ARG1  # U
P_REC_ACT = P_ARG2  # LSTM/GRU: activation code of the gates (recurrent_activation)
P_COLS = 26

F_ALPHA = 0  # negative slope of leaky_relu
F_L1 = 1  # kernel regulariser (penalty on W0)
F_L2 = 2
F_RATE = 3  # dropout rate
F_MOMENTUM = 4  # BatchNormalization
F_EPSILON = 5  # BatchNormalization (Normalization's floor of sqrt(variance) is NORM_EPS)
F_COLS = 6

#: Normalization divides by max(sqrt(variance), NORM_EPS) (Keras: backend.epsilon()).
NORM_EPS = 1e-7


def kinds_marker(kinds) -> tuple:
    """The plan's third entry: one slot per family, True where a kind of that family is in
    ``kinds``, else None (Numba leaves out the branches of absent families)."""
    present = {KIND_FAMILY[k] for k in kinds}
    return tuple(True if f in present else None for f in range(FAMILY_SLOTS))


# Losses (the first three take logits)
SOFTMAX_CE = 0
SPARSE_SOFTMAX_CE = 1
SIGMOID_BCE = 2
CATEGORICAL_CE = 3
BINARY_CE = 4
MSE = 5
MAE = 6
HUBER = 7  # 0.5 d^2 where |d| <= HUBER_DELTA, else delta (|d| - delta / 2); d = pred - y
KL_DIVERGENCE = 8  # sum over outputs of y log(y / p), y and p clipped to [PROB_EPS, 1]
POISSON = 9  # mean over outputs of p - y log(p + PROB_EPS)
N_LOSSES = 10
#: Keras's default delta of the Huber loss (the one the kernels compute)
HUBER_DELTA = 1.0

# Optimizers; hyper-parameter vector layout in comments
SGD = 0  # [lr]
MOMENTUM = 1  # [lr, momentum, nesterov]
ADAGRAD = 2  # [lr, epsilon]
RMSPROP = 3  # [lr, rho, epsilon]
ADAM = 4  # [lr, beta_1, beta_2, epsilon, weight_decay]  (weight_decay > 0: AdamW)
NADAM = 5  # [lr, beta_1, beta_2, epsilon]  (Keras 3's Nadam)
AMSGRAD = 6  # [lr, beta_1, beta_2, epsilon, weight_decay]  (Adam's; state m, v, max v)
RMSPROP_MC = 7  # [lr, rho, epsilon, momentum, centered]  (state sq, momentum buf, mean g)
N_OPTS = 8

# Number of optimizer state slots, by optimizer code
STATE_SLOTS = (0, 1, 1, 1, 2, 2, 3, 3)
#: Length of each optimizer's own entries of the hyper vector (above), by code
HYPER_LEN = (1, 3, 2, 3, 5, 4, 5, 5)
# Gradient clipping (Keras's clipnorm, clipvalue, global_clipnorm): three optional entries
# after the optimizer's own, at HYPER_LEN[code] + H_CLIP*; absent (a shorter vector) or 0
# means off.  train_step applies the first one set (at most one is, as Keras requires) to
# the gradient of the trainable prefix before the update.
H_CLIPNORM, H_CLIPVALUE, H_GLOBAL_CLIPNORM = 0, 1, 2
N_CLIP = 3
# Keras 3's decoupled weight decay of the optimizers whose own entries have none (all but
# ADAM and AMSGRAD): an optional entry after the clip entries, at HYPER_LEN[code] +
# H_WEIGHT_DECAY; absent or 0 means off.  optimizer_update first scales the parameters by
# 1 - lr * weight_decay (Keras: p -= p * weight_decay * lr), then steps.
H_WEIGHT_DECAY = N_CLIP
#: The codes whose own entries carry the weight decay (fused into their update loop).
OWN_DECAY = (ADAM, AMSGRAD)

# Metrics accumulated by batch_stats: a metrics table (M, M_COLS) int64, one row per metric
# [kind, slot (its first entry in stats), k, from_logits], and a (M,) float64 threshold per
# row.  Every kind adds sums only, so that a whole epoch's metric is a ratio of its sums.
ACC_NONE = 0  # (no metric; kept as a name for "no accuracy")
ACC_SPARSE = 1  # 1 slot: rows with argmax(out) == label
ACC_CATEGORICAL = 2  # 1 slot: rows with argmax(out) == argmax(y)
ACC_BINARY = 3  # 1 slot: sum over rows of the fraction of outputs with (out > thr) == (y > .5)
M_TOP_K = 4  # 1 slot: rows whose argmax(y)'s score has fewer than k higher scores
M_SPARSE_TOP_K = 5  # 1 slot: the same with integer labels
M_CONFUSION = 6  # 3 slots: true positives, false positives, false negatives of out > thr
M_HISTOGRAM = 7  # 2k slots: positives then negatives by bucket, k thresholds j / (k - 1)
N_METRICS = 8
M_KIND, M_SLOT, M_K, M_LOGITS = 0, 1, 2, 3
M_COLS = 4

# Layout of the stats vector written by run_epoch
STAT_LOSS = 0  # sum over batches of batch loss * batch rows
STAT_CORRECT = 1  # the first accuracy's slot (the metrics table names every slot)
STAT_ABS = 2  # sum |out - y| over elements
STAT_SQ = 3  # sum (out - y)^2 over elements
STAT_ROWS = 4  # rows seen
# set (not accumulated) by a training call: 1.0 when an entry of params, the optimizer state
# or the non-trainable weights is not finite at its end, else 0.0 (the caller's overflow
# check without another pass in Python)
STAT_NONFINITE = 5
STAT_LEN = 6  # the fixed entries; metric slots may follow

# Probability clipping of the cross-entropies on probabilities (as Keras)
PROB_EPS = 1e-7
