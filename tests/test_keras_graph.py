"""General Keras functional graphs against real Keras 3 (torch backend).

Several inputs (``predict([x1, x2])`` and dicts by input name), several outputs, shared
layers, every merge layer (with Keras 3's merge masks), ``Dot``, encoder-decoder models
whose decoder starts from the encoder's states (``initial_state=``), states given as model
inputs, and ``Attention`` / ``AdditiveAttention`` in their variants. Each model has random
weights, is saved as ``.keras`` and ``.h5`` and read live, and must match Keras' ``predict``
(float32, atol 1e-5); compiled vs oracle and the ``.fastgate`` round trip too.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

import fastgate  # noqa: E402

L = keras.layers
ATOL = 1e-5  # float32 outputs of O(1)


from conftest import keras_cases, randomize  # noqa: E402


def padded(rng, batch=4, steps=6, width=3, *, empty_row=False):
    """Inputs with all-zero steps (masked by Masking(0.0)): trailing, leading, interior."""
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    x[0, steps - 2:] = 0
    x[1, :2] = 0
    x[2, steps // 2] = 0
    if empty_row:
        x[3] = 0
    return x


# ------------------------------------------------------------------------------- cases
def case_two_masked_branches(rng):
    # Concatenate (features) and Add of two masked inputs: Keras 3 ORs the step masks of
    # an elementwise merge and takes any() over the per-feature concatenated masks.
    a, b = keras.Input((None, 3), name="left"), keras.Input((None, 3), name="right")
    ma, mb = L.Masking(0.0)(a), L.Masking(0.0)(b)
    joined = L.LSTM(4)(L.Concatenate()([ma, mb]))
    summed = L.GRU(3, return_sequences=True)(L.Add()([ma, mb]))
    return keras.Model([a, b], [joined, summed]), [[padded(rng), padded(rng)[::-1].copy()]]


def case_elementwise_merges(rng):
    # Subtract, Multiply, Average, Maximum, Minimum of recurrent outputs, then Dense.
    a, b, c = (keras.Input((None, 3)) for _ in range(3))
    ya, yb, yc = (L.SimpleRNN(4, return_sequences=True)(t) for t in (a, b, c))
    merged = [L.Subtract()([ya, yb]), L.Multiply()([ya, yb, yc]), L.Average()([ya, yc]),
              L.Maximum()([ya, yb, yc]), L.Minimum()([yb, yc])]
    out = L.Dense(2)(L.Concatenate(axis=-1)(merged))
    data = [rng.normal(size=(3, 5, 3)).astype(np.float32) for _ in range(3)]
    return keras.Model([a, b, c], out), [data]


def case_concatenate_time_axis_masked(rng):
    # Concatenate along the steps axis of a masked and an unmasked sequence: the unmasked
    # one counts as all valid.
    a, b = keras.Input((5, 3)), keras.Input((4, 3))
    joined = L.Concatenate(axis=1)([L.Masking(0.0)(a), b])
    out = L.LSTM(4, return_sequences=True)(joined)
    return keras.Model([a, b], out), [[padded(rng, 3, 5), padded(rng, 3, 4)]]


def case_dot(rng):
    # Dot over features (per step scores), over steps, and normalized (cosine).
    a, b = keras.Input((5, 3)), keras.Input((5, 3))
    ya = L.LSTM(4, return_sequences=True)(a)
    yb = L.GRU(4, return_sequences=True)(b)
    scores = L.Dot(axes=2)([ya, yb])                 # (B, 5, 5)
    over_steps = L.Dot(axes=1)([ya, yb])             # (B, 4, 4)
    last_a, last_b = L.LSTM(3)(a), L.GRU(3)(b)
    cosine = L.Dot(axes=-1, normalize=True)([last_a, last_b])   # (B, 1)
    pairs = L.Dot(axes=(1, 2))([ya, L.GRU(5, return_sequences=True)(b)])   # (B, 4, 5)
    data = [rng.normal(size=(3, 5, 3)).astype(np.float32) for _ in range(2)]
    return keras.Model([a, b], [scores, over_steps, cosine, pairs]), [data]


def case_shared_layer(rng):
    # One LSTM applied to two inputs (a siamese model): the same weights at two nodes.
    shared = L.LSTM(4)
    a, b = keras.Input((None, 3)), keras.Input((None, 3))
    distance = L.Subtract()([shared(L.Masking()(a)), shared(b)])
    dense = L.Dense(2)
    out = L.Add()([dense(distance), dense(shared(a))])
    return keras.Model([a, b], out), [[padded(rng), padded(rng)]]


def case_seq2seq_lstm(rng):
    # The encoder-decoder tutorial: the decoder LSTM starts from the encoder's [h, c].
    encoder_in = keras.Input((None, 3), name="encoder_in")
    decoder_in = keras.Input((None, 2), name="decoder_in")
    _, h, c = L.LSTM(5, return_state=True)(L.Masking()(encoder_in))
    decoded = L.LSTM(5, return_sequences=True)(decoder_in, initial_state=[h, c])
    out = L.Dense(2, activation="softmax")(decoded)
    data = [padded(rng, 4, 6, 3), rng.normal(size=(4, 4, 2)).astype(np.float32)]
    return keras.Model([encoder_in, decoder_in], out), [data]


def case_seq2seq_gru_bidirectional(rng):
    # A bidirectional GRU encoder; its forward and backward states start a Bidirectional
    # decoder (initial_state: forward states, then backward) and a GRU from their sum.
    encoder_in, decoder_in = keras.Input((None, 3)), keras.Input((None, 3))
    _, forward_h, backward_h = L.Bidirectional(L.GRU(4, return_state=True))(encoder_in)
    decoded = L.Bidirectional(L.GRU(4, return_sequences=True))(
        decoder_in, initial_state=[forward_h, backward_h])
    summed = L.GRU(4)(decoder_in, initial_state=L.Add()([forward_h, backward_h]))
    data = [rng.normal(size=(3, 5, 3)).astype(np.float32),
            rng.normal(size=(3, 4, 3)).astype(np.float32)]
    return keras.Model([encoder_in, decoder_in], [decoded, summed]), [data]


def case_state_inputs(rng):
    # The initial state is a model input (a decoder step model of a seq2seq tutorial).
    x = keras.Input((None, 3), name="tokens")
    h, c = keras.Input((4,), name="h"), keras.Input((4,), name="c")
    out, h_n, c_n = L.LSTM(4, return_sequences=True, return_state=True)(
        x, initial_state=[h, c])
    simple = L.SimpleRNN(4)(x, initial_state=h_n)
    data = [rng.normal(size=(3, 5, 3)).astype(np.float32),
            rng.normal(size=(3, 4)).astype(np.float32),
            rng.normal(size=(3, 4)).astype(np.float32)]
    as_dict = dict(zip(["tokens", "h", "c"], data))
    return keras.Model([x, h, c], [out, h_n, c_n, simple]), [data, as_dict]


def _attention_case(layer, *, key=False, masks="none", causal=False, scores=False):
    def build(rng):
        q, v = keras.Input((None, 4)), keras.Input((None, 4))
        inputs = [q, v]
        query, value = L.LSTM(4, return_sequences=True)(q), v
        if masks == "implicit":
            value = L.Masking(0.0)(v)
        args = [query, value]
        if key:
            k = keras.Input((None, 4))
            inputs.append(k)
            args.append(k)
        kwargs = {}
        if masks == "explicit":
            kwargs["mask"] = [ops.any(ops.not_equal(q, 0), axis=-1),
                              ops.any(ops.not_equal(v, 0), axis=-1)]
        if causal:
            kwargs["use_causal_mask"] = True
        if scores:
            kwargs["return_attention_scores"] = True
        result = layer()(args, **kwargs)
        outputs = list(result) if scores else [result]
        outputs.append(L.GRU(3)(outputs[0]))
        data = [padded(rng, 4, 5, 4, empty_row=True), padded(rng, 4, 6, 4)]
        if key:
            data.append(rng.normal(size=(4, 6, 4)).astype(np.float32))
        if causal:
            data[1] = data[1][:, :5]
            if key:
                data[2] = data[2][:, :5]
        return keras.Model(inputs, outputs), [data]
    return build


CASES = {
    "two_masked_branches": case_two_masked_branches,
    "elementwise_merges": case_elementwise_merges,
    "concatenate_time_axis_masked": case_concatenate_time_axis_masked,
    "dot": case_dot,
    "shared_layer": case_shared_layer,
    "seq2seq_lstm": case_seq2seq_lstm,
    "seq2seq_gru_bidirectional": case_seq2seq_gru_bidirectional,
    "state_inputs": case_state_inputs,
    "attention_plain": _attention_case(L.Attention),
    "attention_scaled_key_scores": _attention_case(lambda: L.Attention(use_scale=True),
                                                   key=True, scores=True),
    "attention_concat_explicit_masks": _attention_case(
        lambda: L.Attention(score_mode="concat", use_scale=True), masks="explicit"),
    "attention_implicit_mask": _attention_case(L.Attention, masks="implicit"),
    "attention_causal_masked": _attention_case(L.Attention, masks="explicit", causal=True,
                                               scores=True),
    "additive": _attention_case(L.AdditiveAttention),
    "additive_no_scale_key_masks": _attention_case(
        lambda: L.AdditiveAttention(use_scale=False), key=True, masks="explicit",
        scores=True),
    "additive_causal": _attention_case(L.AdditiveAttention, causal=True),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return keras_cases(CASES, tmp_path_factory.mktemp("keras_graphs"), ("keras", "h5"))


from conftest import assert_same  # noqa: E402


@pytest.mark.parametrize("source", ["keras", "h5", "live"])
@pytest.mark.parametrize("name", list(CASES))
def test_graph_matches_keras(built, name, source):
    model, paths, inputs, expected = built(name)
    loaded = fastgate.from_keras(model) if source == "live" else fastgate.load(paths[source])
    for k, (x, want) in enumerate(zip(inputs, expected)):
        assert_same(loaded.predict(x), want, f"{name} [{source}] input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_graph_compiled_vs_oracle_and_round_trip(built, name, tmp_path):
    _, paths, inputs, expected = built(name)
    loaded = fastgate.load(paths["keras"])
    loaded.save(tmp_path / "m.fastgate")
    again = fastgate.load(tmp_path / "m.fastgate")
    assert again.input_names == loaded.input_names
    assert again.output_names == loaded.output_names
    for x, want in zip(inputs, expected):
        compiled = loaded.predict(x)
        with fastgate.use_backend("python"):
            assert_same(loaded.predict(x), compiled, f"{name} oracle vs compiled")
        assert_same(again.predict(x), want, f"{name} after .fastgate round trip")
    assert loaded.summary()


def test_names_and_input_forms(built):
    model, paths, inputs, expected = built("seq2seq_lstm")
    loaded = fastgate.load(paths["keras"])
    assert loaded.input_names == ["encoder_in", "decoder_in"]
    assert loaded.output_names == list(model.output_names)
    encoder, decoder = inputs[0]
    by_name = loaded.predict({"decoder_in": decoder, "encoder_in": encoder})
    assert_same(by_name, expected[0], "dict inputs")
    assert_same(loaded.predict((encoder, decoder), batch_size=3), expected[0], "batches")
    with pytest.raises(fastgate.ShapeError, match="2 inputs"):
        loaded.predict(encoder)
    with pytest.raises(fastgate.ShapeError, match="missing"):
        loaded.predict({"encoder_in": encoder})
    with pytest.raises(fastgate.ConfigError, match="several inputs"):
        loaded.initial_state(2)


def test_shared_layer_is_one_op(built):
    _, paths, _, _ = built("shared_layer")
    loaded = fastgate.load(paths["keras"])
    recurrent = [n.op for n in loaded.nodes if isinstance(n.op, fastgate.Recurrent)]
    assert len(recurrent) == 3 and len({id(op) for op in recurrent}) == 1
    # a shared op counts once, like Keras' count_params (fastgate also stores the
    # recurrent bias Keras does not have: never fewer weights than Keras)
    model = built("shared_layer")[0]
    assert model.count_params() <= loaded.count_params() < 2 * model.count_params()


def test_whole_sequence_op_with_initial_state_matches_keras():
    # The public way to start a whole-sequence op from a given state: op(x, initial_state,
    # mask), as Keras' layer(x, initial_state=..., mask=...).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    mask = np.ones((3, 5), bool)
    mask[0, 3:] = False
    h, c = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    for layer, state in ((L.LSTM(4, return_sequences=True, return_state=True), [h, c]),
                         (L.Bidirectional(L.GRU(4, return_sequences=True)), [h, c])):
        inputs = keras.Input((None, 2))
        model = randomize(keras.Model(inputs, layer(inputs)), seed=3)
        expected = layer(x, initial_state=state, mask=mask)
        op = fastgate.from_keras(model).nodes[0].op
        actual = op(x, initial_state=state, mask=mask)
        if not isinstance(expected, (list, tuple)):
            expected, actual = [expected], [actual]
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, keras.ops.convert_to_numpy(e), rtol=0, atol=ATOL)


def test_old_fastgate_files_still_load():
    # Files written before graphs: one "source" per node, one input_shape, no names.
    import io
    import json
    import zipfile

    from fastgate.serialization import from_bytes, to_bytes

    rng = np.random.default_rng(9)
    model = randomize(keras.Sequential([keras.Input((None, 3)), L.Masking(), L.GRU(4),
                                        L.Dense(2, name="head")]), 2)
    loaded = fastgate.from_keras(model)
    archive = zipfile.ZipFile(io.BytesIO(to_bytes(loaded)))
    document = json.loads(archive.read("fastgate.json"))
    spec = document["object"]["spec"]
    for key in ("input_names", "output_names"):
        del spec[key]
    assert all(set(node) == {"name", "op", "source"} for node in spec["nodes"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as rewritten:
        for member in archive.namelist():
            data = archive.read(member)
            rewritten.writestr(member, json.dumps(document) if member == "fastgate.json"
                               else data)
    again = from_bytes(buffer.getvalue())
    x = padded(rng)
    np.testing.assert_allclose(again.predict(x), model.predict(x, verbose=0), rtol=0,
                               atol=ATOL)
    assert again.input_names == ["input_0"] and again.input_shape == (None, None, 3)
    assert again.output_names == ["head"]


def test_dict_inputs_and_outputs(tmp_path):
    # A model built with dicts takes a dict and gives a dict, keyed as in Keras.
    a, b = keras.Input((None, 3), name="a"), keras.Input((None, 3), name="b")
    model = randomize(keras.Model({"a": a, "b": b}, {"sum": L.LSTM(2)(L.Add()([a, b])),
                                                     "left": L.GRU(2)(a)}), seed=1)
    model.save(tmp_path / "dict.keras")
    rng = np.random.default_rng(2)
    data = {"a": rng.normal(size=(2, 4, 3)).astype(np.float32),
            "b": rng.normal(size=(2, 4, 3)).astype(np.float32)}
    expected = model.predict(data, verbose=0)
    loaded = fastgate.load(tmp_path / "dict.keras")
    loaded.save(tmp_path / "dict.fastgate")
    for candidate in (loaded, fastgate.load(tmp_path / "dict.fastgate")):
        actual = candidate.predict(data)
        assert isinstance(actual, dict) and set(actual) == set(expected)
        for key in expected:
            np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------- fuzzing
def test_mutated_graph_documents(built, tmp_path):
    # A graph's .fastgate document and Keras configuration with values replaced at random
    # (references, masks, states, operation arguments): each loads and predicts, or raises
    # a fastgate error; nothing else escapes.
    import io
    import json
    import zipfile

    from hypothesis import given, settings
    from test_fuzz_loaders import FUZZ, json_edits, rezip

    model, paths, inputs, _ = built("attention_causal_masked")
    fastgate.load(paths["keras"]).save(tmp_path / "seed.fastgate")
    seeds = {".fastgate": ((tmp_path / "seed.fastgate").read_bytes(), "fastgate.json"),
             ".keras": (paths["keras"].read_bytes(), "config.json")}

    def load_and_run(path):
        try:
            fastgate.load(path).predict(inputs[0])
        except fastgate.FastgateError:
            pass

    for suffix, (data, member) in seeds.items():
        document = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(member))

        @settings(FUZZ, max_examples=100)
        @given(json_edits(document))
        def check(edited):
            fuzzed = rezip(data, lambda name: name == member,
                           lambda raw: json.dumps(edited, allow_nan=True).encode())
            path = tmp_path / f"fuzzed{suffix}"
            path.write_bytes(fuzzed)
            load_and_run(path)

        check()
