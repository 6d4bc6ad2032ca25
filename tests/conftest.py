"""Shared helpers of fastgate's tests.

Keras 3 runs on the PyTorch backend in the tests: the variable must be set before anything
imports keras, hence first thing in this file.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402
from fastgate.layout import GATE_COUNT, CellWeights  # noqa: E402

#: The directory the fastgate under test was imported from: site-packages after
#: `pip install .`, the checkout after `pip install -e .`. Subprocesses put it first on their
#: path and run from elsewhere than the checkout, so that they test the same installation.
FASTGATE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(fastgate.__file__)))


def subprocess_env(**overrides):
    """``os.environ`` with ``overrides``, importing the fastgate under test first."""
    env = dict(os.environ)
    env.update(overrides)
    env["PYTHONPATH"] = os.pathsep.join(
        [FASTGATE_HOME] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env

#: Tolerances of a comparison against the oracle, per dtype (absolute, on O(1) values).
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(actual, expected, dtype, *, scale_with_value=False, what=""):
    """Assert ``|actual - expected| <= tol * max(1, |expected|)`` (or ``<= tol``).

    ``tol`` is :data:`TOLERANCE` of ``dtype``. With ``scale_with_value`` the tolerance grows
    with the magnitude of each expected value (for unbounded activations); NaN must match
    NaN and infinities must match exactly.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = TOLERANCE[np.dtype(dtype)]
    if scale_with_value:
        finite = np.isfinite(expected)
        bound = tol * np.maximum(1.0, np.abs(np.where(finite, expected, 0)))
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        same_special = (np.isnan(actual) & np.isnan(expected)) | (
            ~finite & (actual == expected))
        ok = np.where(finite, diff <= bound, same_special)
        if not ok.all():
            worst = np.unravel_index(np.argmax(np.where(ok, 0, diff)), diff.shape)
            raise AssertionError(
                f"{what}: {np.count_nonzero(~ok)} of {ok.size} values differ beyond "
                f"{tol} x max(1, |value|); first at {worst}: {actual[worst]} vs "
                f"{expected[worst]}")
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=tol, err_msg=what)


def random_cell_weights(cell, input_size, hidden_size, *, num_layers=1, bidirectional=False,
                        proj_size=0, rng=None, scale=0.3, dtype=np.float64, bias=True):
    """Random weights in fastgate's layout, ``normal(0, scale)``.

    Returns the list of :class:`CellWeights`, one per layer and direction.
    """
    rng = np.random.default_rng(rng)
    dirs = 2 if bidirectional else 1
    gates = GATE_COUNT[cell] * hidden_size
    width = proj_size or hidden_size
    weights = []
    for layer in range(num_layers):
        in_width = input_size if layer == 0 else dirs * width
        for _ in range(dirs):
            def draw(*shape):
                return (rng.normal(0, scale, size=shape) if bias or len(shape) == 2
                        else np.zeros(shape)).astype(dtype)
            weights.append(CellWeights(
                draw(in_width, gates), draw(width, gates), draw(gates), draw(gates),
                draw(hidden_size, proj_size) if proj_size else None))
    return weights


def torch_to_cellweights(module):
    """Copy the weights of a ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` into fastgate's layout.

    Written out by hand (not through fastgate's importer) so that the oracle-vs-PyTorch
    tests check the layout independently: PyTorch stores ``weight_ih_l{k}{suffix}`` as
    ``(G*H, D)`` with gates in fastgate's order (LSTM ``i f g o``, GRU ``r z n``), so each
    kernel is the transpose; ``weight_hr_l{k}`` (projection) is ``(P, H)``; with
    ``bias=False`` the biases are zero.
    """
    weights = []
    dirs = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for direction in range(dirs):
            suffix = f"l{layer}" + ("_reverse" if direction else "")

            def tensor(name):
                return getattr(module, f"{name}_{suffix}").detach().cpu().numpy()

            input_kernel = tensor("weight_ih").T.copy()
            recurrent_kernel = tensor("weight_hh").T.copy()
            if module.bias:
                input_bias, recurrent_bias = tensor("bias_ih").copy(), tensor("bias_hh").copy()
            else:
                input_bias = np.zeros(input_kernel.shape[1], input_kernel.dtype)
                recurrent_bias = np.zeros(input_kernel.shape[1], input_kernel.dtype)
            projection = None
            if getattr(module, "proj_size", 0):
                projection = tensor("weight_hr").T.copy()
            weights.append(CellWeights(input_kernel, recurrent_kernel, input_bias,
                                       recurrent_bias, projection))
    return weights


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name (reproducible, distinct per test)."""
    seed = sum(map(ord, request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def randomize(model, seed=0):
    """Give a Keras model seeded random weights, ``normal(0, 0.3)`` in float32; returns it."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def keras_cases(cases, directory, suffixes):
    """``get(name)`` -> ``(model, paths, inputs, expected)``: the Keras model ``cases[name](rng)``
    builds, with seeded random weights, its predictions on each input, and the model saved as
    ``directory/name.SUFFIX`` for each suffix (``paths`` by suffix); each case built once."""
    cache = {}

    def get(name):
        if name not in cache:
            rng = np.random.default_rng(sum(map(ord, name)))
            model, inputs = cases[name](rng)
            randomize(model, seed=len(name))
            expected = [model.predict(x, verbose=0) for x in inputs]
            paths = {suffix: directory / f"{name}.{suffix}" for suffix in suffixes}
            for path in paths.values():
                model.save(path)
            cache[name] = (model, paths, inputs, expected)
        return cache[name]
    return get


class SavedKerasCase:
    """The Keras model of ``cases[name]``, with seeded random weights, saved in every format
    fastgate reads (``.keras``, HDF5, ``.weights.h5`` and Keras-2-style weights-only HDF5),
    with Keras' own predictions on each input; :meth:`load` reads one format back.
    ``weights(model, seed)`` gives the model its weights (default :func:`randomize`)."""

    def __init__(self, cases, name, directory, weights=None):
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        rng = np.random.default_rng(sum(map(ord, name)))
        model, self.inputs = cases[name](rng)
        self.model = (weights or randomize)(model, seed=len(name))
        self.expected = [model.predict(x, verbose=0) for x in self.inputs]
        base = directory / name
        self.paths = {"keras": f"{base}.keras", "h5": f"{base}.h5",
                      "weights_h5": f"{base}.weights.h5"}
        model.save(self.paths["keras"])
        model.save(self.paths["h5"])
        model.save_weights(self.paths["weights_h5"])
        # Keras-2-style weights-only HDF5 (layer_names / weight_names), as save_weights wrote.
        self.paths["legacy_weights_h5"] = f"{base}.legacy.h5"
        with h5py.File(self.paths["legacy_weights_h5"], "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, model)
        self.architecture = model.to_json()

    def load(self, fmt):
        if fmt == "live":
            return fastgate.from_keras(self.model)
        if fmt in ("weights_h5", "legacy_weights_h5"):
            return fastgate.load(self.paths[fmt], architecture=self.architecture)
        return fastgate.load(self.paths[fmt])


def saved_keras_cases(cases, directory, weights=None):
    """``get(name)`` -> the :class:`SavedKerasCase` of ``cases[name]``, each built once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = SavedKerasCase(cases, name, directory, weights)
        return cache[name]
    return get


def assert_same(actual, expected, what, atol=1e-5):
    """A model's float32 outputs (one array or a list) equal Keras' ``expected`` within
    ``atol`` (float32 outputs of O(1)), shape for shape."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), what
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{what} output {k}", atol)
        return
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=what)
