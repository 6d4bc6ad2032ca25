"""The oracle (python backend) against PyTorch's nn.LSTM / nn.GRU / nn.RNN.

This is what makes the oracle the definition of correctness: with random weights
(normal, std 0.3, so that a gate or bias order mistake shows), copied by hand into fastgate's
layout (:func:`conftest.torch_to_cellweights`), the oracle reproduces PyTorch's outputs and
final states, over stacked, bidirectional, projected, bias-free layers, initial states, packed
sequences (``lengths=``), both batch layouts and unbatched input.

Tolerances: float32 1e-5 absolute (values are O(1)); float64 1e-12 absolute.
"""

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastgate
from conftest import assert_close, torch_to_cellweights

INPUT_SIZE, HIDDEN_SIZE, PROJ_SIZE, BATCH, STEPS = 5, 6, 3, 4, 7

# (kind, torch options)
CONFIGS = [
    ("lstm", dict(num_layers=1)),
    ("lstm", dict(num_layers=3, bidirectional=True)),
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=PROJ_SIZE)),
    ("lstm", dict(num_layers=3, proj_size=PROJ_SIZE, bias=False)),
    ("lstm", dict(num_layers=1, bidirectional=True, bias=False)),
    ("gru", dict(num_layers=1)),
    ("gru", dict(num_layers=3, bidirectional=True)),
    ("gru", dict(num_layers=2, bias=False)),
    ("rnn_tanh", dict(num_layers=1)),
    ("rnn_tanh", dict(num_layers=3, bidirectional=True, bias=False)),
    ("rnn_relu", dict(num_layers=1)),
    ("rnn_relu", dict(num_layers=2, bidirectional=True)),
]


def config_id(config):
    kind, options = config
    return kind + "".join(f"-{k}={v}" for k, v in options.items())


def make_pair(kind, options, dtype, batch_first, seed=0):
    """A torch module with normal(0, 0.3) weights and the fastgate layer holding the same."""
    torch.manual_seed(seed)
    if kind == "lstm":
        module = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=batch_first, **options)
    elif kind == "gru":
        module = torch.nn.GRU(INPUT_SIZE, HIDDEN_SIZE, batch_first=batch_first, **options)
    else:
        module = torch.nn.RNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=kind[4:],
                              batch_first=batch_first, **options)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.3)
    module = module.to(torch.float64 if dtype == np.float64 else torch.float32).eval()
    weights = torch_to_cellweights(module)
    bidirectional = options.get("bidirectional", False)
    if kind == "lstm":
        layer = fastgate.LSTM(weights, bidirectional=bidirectional, dtype=dtype,
                              batch_first=batch_first)
    elif kind == "gru":
        layer = fastgate.GRU(weights, bidirectional=bidirectional, dtype=dtype,
                             batch_first=batch_first)
    else:
        layer = fastgate.SimpleRNN(weights, bidirectional=bidirectional,
                                   activation=kind[4:], dtype=dtype, batch_first=batch_first)
    return module, layer


def random_state(layer, batch, rng, dtype):
    shapes = [tuple(batch if d == -1 else d for d in s) for s in layer.state_shapes]
    arrays = [rng.normal(0, 0.5, size=s).astype(dtype) for s in shapes]
    return tuple(arrays) if layer.cell == "lstm" else arrays[0]


def to_torch(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(torch.from_numpy(s) for s in state)
    return torch.from_numpy(state)


def to_numpy(state):
    if isinstance(state, tuple):
        return tuple(s.detach().numpy() for s in state)
    return state.detach().numpy()


def compare_states(actual, expected, dtype, scale):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == 2
        for a, e, name in zip(actual, expected, ("h_n", "c_n")):
            assert a.dtype == dtype
            assert_close(a, e, dtype, scale_with_value=scale, what=name)
    else:
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype, scale_with_value=scale, what="h_n")


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_oracle_matches_torch(config, dtype, batch_first, with_state, with_lengths, rng):
    kind, options = config
    module, layer = make_pair(kind, options, dtype, batch_first)
    shape = (BATCH, STEPS, INPUT_SIZE) if batch_first else (STEPS, BATCH, INPUT_SIZE)
    x = rng.normal(0, 1, size=shape).astype(dtype)
    state = random_state(layer, BATCH, rng, dtype) if with_state else None
    # PyTorch packs only positive lengths; one sequence is full, one has a single step.
    lengths = np.array([STEPS, 1, 4, 6]) if with_lengths else None

    with torch.no_grad():
        x_t = torch.from_numpy(x)
        if with_lengths:
            packed = pack_padded_sequence(x_t, torch.from_numpy(lengths),
                                          batch_first=batch_first, enforce_sorted=False)
            packed_out, expected_state = module(packed, to_torch(state))
            expected_out, _ = pad_packed_sequence(packed_out, batch_first=batch_first,
                                                  total_length=STEPS)
        else:
            expected_out, expected_state = module(x_t, to_torch(state))
    expected_out, expected_state = expected_out.numpy(), to_numpy(expected_state)

    with fastgate.use_backend("python"):
        out, final_state = layer(x, state=state, lengths=lengths)

    scale = kind == "rnn_relu"  # relu is unbounded: tolerance relative to the value
    assert out.dtype == dtype
    assert_close(out, expected_out, dtype, scale_with_value=scale, what="outputs")
    compare_states(final_state, expected_state, dtype, scale)
    if with_lengths:  # padded steps are zero, as pad_packed_sequence makes them
        steps_axis_out = out if batch_first else out.transpose(1, 0, 2)
        for b, length in enumerate(lengths):
            assert not steps_axis_out[b, length:].any()


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[6], CONFIGS[11]], ids=config_id)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_oracle_matches_torch_unbatched(config, dtype, batch_first, with_state, rng):
    """A ``(T, D)`` input is one sequence; states are ``(layers * dirs, width)``."""
    kind, options = config
    module, layer = make_pair(kind, options, dtype, batch_first)
    x = rng.normal(0, 1, size=(STEPS, INPUT_SIZE)).astype(dtype)
    state = None
    if with_state:
        batched = random_state(layer, 1, rng, dtype)
        state = (tuple(s[:, 0] for s in batched) if isinstance(batched, tuple)
                 else batched[:, 0])
    with torch.no_grad():
        expected_out, expected_state = module(torch.from_numpy(x), to_torch(state))
    expected_out, expected_state = expected_out.numpy(), to_numpy(expected_state)
    with fastgate.use_backend("python"):
        out, final_state = layer(x, state=state)
    assert out.shape == expected_out.shape
    scale = kind == "rnn_relu"
    assert_close(out, expected_out, dtype, scale_with_value=scale, what="outputs")
    compare_states(final_state, expected_state, dtype, scale)


def test_torch_to_cellweights_matches_the_documented_layout():
    """The hand-written copy itself: shapes of the internal layout, projection included."""
    module = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True,
                           proj_size=PROJ_SIZE)
    weights = torch_to_cellweights(module)
    assert len(weights) == 4
    assert weights[0].input_kernel.shape == (INPUT_SIZE, 4 * HIDDEN_SIZE)
    assert weights[1].recurrent_kernel.shape == (PROJ_SIZE, 4 * HIDDEN_SIZE)
    assert weights[2].input_kernel.shape == (2 * PROJ_SIZE, 4 * HIDDEN_SIZE)
    assert weights[3].projection.shape == (HIDDEN_SIZE, PROJ_SIZE)
    np.testing.assert_array_equal(weights[3].input_kernel,
                                  module.weight_ih_l1_reverse.detach().numpy().T)
