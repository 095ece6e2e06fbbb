# Included by _cython.pyx: the codes of kinds, activations, losses and optimizers.

# Codes (checked against codes.py at import)

cdef enum:
    LINEAR = 0
    RELU = 1
    LEAKY_RELU = 2
    SIGMOID = 3
    TANH = 4
    SOFTMAX = 5
    ELU = 6
    SELU = 7
    GELU = 8
    SILU = 9
    SOFTPLUS = 10
    N_ACTS = 11

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

    # plan columns (codes.py)
    P_KIND = 0
    P_ACT = 1
    P_IN0 = 2
    P_IN1 = 3
    P_IN2 = 4
    P_OUT0 = 5
    P_OUT1 = 6
    P_OUT2 = 7
    P_IN_OFF = 8
    P_OUT_OFF = 9
    P_SAVE_OFF = 10
    P_ACC_OFF = 11
    P_W0 = 12
    P_W1 = 13
    P_W2 = 14
    P_S0 = 15
    P_S1 = 16
    P_DOUT_OFF = 17
    P_DX_OFF = 18
    P_BACKWARD = 19
    P_ARG0 = 20
    P_ARG1 = 21
    P_ARG2 = 22
    P_ARG3 = 23
    P_ARG4 = 24
    P_ARG5 = 25
    P_COLS = 26
    P_VOCAB = 20  # P_ARG0 of an Embedding row
    P_RETURN_SEQ = 20  # P_ARG0 .. P_ARG2 of a recurrent row
    P_UNITS = 21
    P_REC_ACT = 22

    F_ALPHA = 0
    F_L1 = 1
    F_L2 = 2
    F_RATE = 3
    F_MOMENTUM = 4
    F_EPSILON = 5
    F_COLS = 6

    SOFTMAX_CE = 0
    SPARSE_SOFTMAX_CE = 1
    SIGMOID_BCE = 2
    CATEGORICAL_CE = 3
    BINARY_CE = 4
    MSE = 5
    MAE = 6
    HUBER = 7
    KL_DIVERGENCE = 8
    POISSON = 9
    N_LOSSES = 10

    SGD = 0
    MOMENTUM = 1
    ADAGRAD = 2
    RMSPROP = 3
    ADAM = 4
    NADAM = 5
    AMSGRAD = 6
    RMSPROP_MC = 7
    N_OPTS = 8

    ACC_NONE = 0
    ACC_SPARSE = 1
    ACC_CATEGORICAL = 2
    ACC_BINARY = 3
    M_TOP_K = 4
    M_SPARSE_TOP_K = 5
    M_CONFUSION = 6
    M_HISTOGRAM = 7
    N_METRICS = 8
    M_KIND = 0
    M_SLOT = 1
    M_K = 2
    M_LOGITS = 3
    M_COLS = 4

    STAT_LOSS = 0
    STAT_CORRECT = 1
    STAT_ABS = 2
    STAT_SQ = 3
    STAT_ROWS = 4
    STAT_NONFINITE = 5
    STAT_LEN = 6

    # label storage kinds (sparse cross-entropy)
    LB_I64 = 0
    LB_I32 = 1
    LB_F32 = 2
    LB_F64 = 3

cnp.import_array()

#: The layer kinds this backend runs (a model with another kind refuses it at build).
KINDS = frozenset({DENSE, DROPOUT, ACTIVATION, BATCHNORM, NORMALIZATION, CONV2D, MAXPOOL2D,
                   AVGPOOL2D, GLOBAL_AVGPOOL2D, GLOBAL_MAXPOOL2D, EMBEDDING, SIMPLE_RNN,
                   LSTM, GRU})

cdef double PROB_EPS = 1e-7
cdef double NORM_EPS = 1e-7
cdef int[8] HYPER_LEN = [1, 3, 2, 3, 5, 4, 5, 5]
cdef int[8] STATE_SLOTS = [0, 1, 1, 1, 2, 2, 3, 3]
cdef double HUBER_DELTA = 1.0
cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SELU_SCALE = 1.0507009873554804934193349852946
cdef double NADAM_DECAY = 0.96
cdef int64_t NADAM_STEPS = 1000


def _check_codes():
    expected = dict(
        LINEAR=LINEAR, RELU=RELU, LEAKY_RELU=LEAKY_RELU, SIGMOID=SIGMOID, TANH=TANH,
        SOFTMAX=SOFTMAX, ELU=ELU, SELU=SELU, GELU=GELU, SILU=SILU, SOFTPLUS=SOFTPLUS,
        SELU_ALPHA=SELU_ALPHA, SELU_SCALE=SELU_SCALE, N_ACTS=N_ACTS, DENSE=DENSE,
        DROPOUT=DROPOUT, ACTIVATION=ACTIVATION, BATCHNORM=BATCHNORM,
        NORMALIZATION=NORMALIZATION, CONV2D=CONV2D, MAXPOOL2D=MAXPOOL2D, AVGPOOL2D=AVGPOOL2D,
        GLOBAL_AVGPOOL2D=GLOBAL_AVGPOOL2D, GLOBAL_MAXPOOL2D=GLOBAL_MAXPOOL2D, N_KINDS=N_KINDS,
        EMBEDDING=EMBEDDING, SIMPLE_RNN=SIMPLE_RNN, LSTM=LSTM, GRU=GRU, P_VOCAB=P_VOCAB,
        P_RETURN_SEQ=P_RETURN_SEQ, P_UNITS=P_UNITS, P_REC_ACT=P_REC_ACT,
        P_KIND=P_KIND, P_ACT=P_ACT, P_IN0=P_IN0, P_IN1=P_IN1, P_IN2=P_IN2, P_OUT0=P_OUT0,
        P_OUT1=P_OUT1, P_OUT2=P_OUT2, P_IN_OFF=P_IN_OFF, P_OUT_OFF=P_OUT_OFF,
        P_SAVE_OFF=P_SAVE_OFF, P_ACC_OFF=P_ACC_OFF, P_W0=P_W0, P_W1=P_W1, P_W2=P_W2, P_S0=P_S0,
        P_S1=P_S1, P_DOUT_OFF=P_DOUT_OFF, P_DX_OFF=P_DX_OFF, P_BACKWARD=P_BACKWARD,
        P_ARG0=P_ARG0, P_ARG1=P_ARG1, P_ARG2=P_ARG2, P_ARG3=P_ARG3, P_ARG4=P_ARG4,
        P_ARG5=P_ARG5, P_COLS=P_COLS, F_ALPHA=F_ALPHA, F_L1=F_L1, F_L2=F_L2,
        F_RATE=F_RATE, F_MOMENTUM=F_MOMENTUM, F_EPSILON=F_EPSILON, F_COLS=F_COLS,
        NORM_EPS=NORM_EPS, N_LOSSES=N_LOSSES, N_OPTS=N_OPTS, SOFTMAX_CE=SOFTMAX_CE,
        SPARSE_SOFTMAX_CE=SPARSE_SOFTMAX_CE, SIGMOID_BCE=SIGMOID_BCE,
        CATEGORICAL_CE=CATEGORICAL_CE, BINARY_CE=BINARY_CE, MSE=MSE, MAE=MAE, HUBER=HUBER,
        KL_DIVERGENCE=KL_DIVERGENCE, POISSON=POISSON, HUBER_DELTA=HUBER_DELTA, NADAM=NADAM,
        HYPER_LEN=tuple(HYPER_LEN[k] for k in range(N_OPTS)), SGD=SGD, N_CLIP=3,
        H_CLIPNORM=0, H_CLIPVALUE=1, H_GLOBAL_CLIPNORM=2, H_WEIGHT_DECAY=3,
        AMSGRAD=AMSGRAD, RMSPROP_MC=RMSPROP_MC, OWN_DECAY=(ADAM, AMSGRAD),
        MOMENTUM=MOMENTUM, ADAGRAD=ADAGRAD, RMSPROP=RMSPROP, ADAM=ADAM, ACC_NONE=ACC_NONE,
        ACC_SPARSE=ACC_SPARSE, ACC_CATEGORICAL=ACC_CATEGORICAL, ACC_BINARY=ACC_BINARY,
        M_TOP_K=M_TOP_K, M_SPARSE_TOP_K=M_SPARSE_TOP_K, M_CONFUSION=M_CONFUSION,
        M_HISTOGRAM=M_HISTOGRAM, N_METRICS=N_METRICS, M_KIND=M_KIND, M_SLOT=M_SLOT, M_K=M_K,
        M_LOGITS=M_LOGITS, M_COLS=M_COLS,
        STAT_LOSS=STAT_LOSS, STAT_CORRECT=STAT_CORRECT, STAT_ABS=STAT_ABS, STAT_SQ=STAT_SQ,
        STAT_ROWS=STAT_ROWS, STAT_NONFINITE=STAT_NONFINITE, STAT_LEN=STAT_LEN, PROB_EPS=PROB_EPS,
        STATE_SLOTS=tuple(STATE_SLOTS[k] for k in range(N_OPTS)),
    )
    for name, value in expected.items():
        if getattr(_codes, name) != value:
            raise ImportError(
                f"fastnn.kernels._cython was compiled with {name}={value!r} but codes.py "
                f"says {getattr(_codes, name)!r}: rebuild the extension"
            )


_check_codes()
