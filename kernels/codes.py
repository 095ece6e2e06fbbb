"""Integer codes shared by every backend (kernels select behaviour by code, not by callable)."""

# Activations
LINEAR = 0
RELU = 1
LEAKY_RELU = 2
SIGMOID = 3
TANH = 4
SOFTMAX = 5

# Layer kinds in a compiled stack
DENSE = 0
DROPOUT = 1
ACTIVATION = 2

# Losses (the first three take logits)
SOFTMAX_CE = 0
SPARSE_SOFTMAX_CE = 1
SIGMOID_BCE = 2
CATEGORICAL_CE = 3
BINARY_CE = 4
MSE = 5
MAE = 6

# Optimizers; hyper-parameter vector layout in comments
SGD = 0  # [lr]
MOMENTUM = 1  # [lr, momentum, nesterov]
ADAGRAD = 2  # [lr, epsilon]
RMSPROP = 3  # [lr, rho, epsilon]
ADAM = 4  # [lr, beta_1, beta_2, epsilon, weight_decay]  (weight_decay > 0: AdamW)

# Number of optimizer state slots, by optimizer code
STATE_SLOTS = (0, 1, 1, 1, 2)

# Accuracy modes for run_epoch statistics
ACC_NONE = 0
ACC_SPARSE = 1  # argmax(out) == label
ACC_CATEGORICAL = 2  # argmax(out) == argmax(y)
ACC_BINARY = 3  # (out > threshold) == y, averaged over outputs

# Layout of the stats vector written by run_epoch
STAT_LOSS = 0  # sum over batches of batch loss * batch rows
STAT_CORRECT = 1  # accuracy numerator (rows, or elements / outputs for binary)
STAT_ABS = 2  # sum |out - y| over elements
STAT_SQ = 3  # sum (out - y)^2 over elements
STAT_ROWS = 4  # rows seen
# set (not accumulated) by a training call: 1.0 when an entry of params or state is not
# finite at its end, else 0.0 (the caller's overflow check without another pass in Python)
STAT_NONFINITE = 5
STAT_LEN = 6

# Probability clipping of the cross-entropies on probabilities (as Keras)
PROB_EPS = 1e-7
