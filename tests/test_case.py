"""Case files: loading, defaults, and a precise error for every kind of bad input."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from derivcheck import CaseError, case_from_dict, discover, load_case

from helpers import CASES

GOOD = """
name = "tiny"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "tanh" }, { layer = "linear", in = 3, out = 2 }]
loss = "mse"
inputs = { batch = 4 }
"""


def write(tmp_path, text, name="case.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_case_defaults(tmp_path):
    case = load_case(write(tmp_path, GOOD))
    assert case.name == "tiny" and case.problem.dtype == "float64" and case.seed == 0
    assert case.quantities == ["L", "dL/dparams", "dL/dx", "dy/dx"]
    assert case.engines == ["symbolic", "finite_diff", "numpy", "torch"]
    assert case.problem.x.shape == (4, 2)
    assert case.summary()["quantities"][:2] == ["L", "dL/d0.weight"]


def test_same_seed_same_numbers(tmp_path):
    a = load_case(write(tmp_path, GOOD))
    b = load_case(write(tmp_path, GOOD))
    np.testing.assert_array_equal(a.problem.x, b.problem.x)
    np.testing.assert_array_equal(a.problem.params["0.weight"], b.problem.params["0.weight"])
    c = load_case(write(tmp_path, GOOD), overrides={"seed": 7})
    assert not np.array_equal(a.problem.x, c.problem.x)


def test_iris_case_reads_the_csv():
    case = load_case(CASES / "iris-mlp.toml")
    assert case.problem.x.shape == (150, 4)
    assert case.problem.meta["classes"] == ["setosa", "versicolor", "virginica"]
    np.testing.assert_allclose(case.problem.x.mean(axis=0), 0, atol=1e-12)  # standardized
    np.testing.assert_array_equal(case.problem.targets.sum(axis=0), [50, 50, 50])


def test_discover_is_sorted_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, GOOD, "b.toml")
    write(tmp_path, GOOD, "sub/a.toml")
    assert [p.name for p in discover([tmp_path])] == ["b.toml", "a.toml"]
    with pytest.raises(CaseError, match="no such file or folder"):
        discover([tmp_path / "missing"])


BAD = [
    # (case text, fragments that must appear in the message)
    ('name = "x"\nnetwork = [{ layer = "conv9" }]\ninputs = {batch=1}', ["network[0].layer", "unknown layer", "'conv9'", "allowed: linear, relu"]),
    (GOOD + 'colour = "blue"\n', ["key 'colour'", "unknown key", "'blue'", "allowed: name, description"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }, { layer = "linear", in = 4, out = 1 }]\ninputs = {batch=1}', ["key 'network'", "layer 1", "expects 4 input features", "gives 3"]),
    ('network = [{ layer = "linear", in = "2", out = 3 }]\ninputs = {batch=1}', ["network[0]", "wrong type", "got '2'", "allowed: integer"]),
    ('network = [{ layer = "linear", in = 2, out = 3, width = 4 }]\ninputs = {batch=1}', ["unknown option 'width'", "allowed: layer, in, out, bias"]),
    ('network = [{ layer = "linear", in = 2 }]\ninputs = {batch=1}', ["needs option 'out'"]),
    ('network = "linear"\ninputs = {batch=1}', ["key 'network'", "non-empty array"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nloss = "hinge"\ninputs = {batch=1}', ["key 'loss'", "unknown loss", "'hinge'", "allowed: cross_entropy"]),
    ('network = [{ layer = "linear", in = 2, out = 1 }]\nloss = "cross_entropy"\ninputs = {batch=1}', ["does not fit", "at least 2 outputs"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\ndtype = "float16"\ninputs = {batch=1}', ["key 'dtype'", "'float16'", "allowed: float64, float32"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nseed = -1\ninputs = {batch=1}', ["key 'seed'", "non-negative"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nseed = 1.5\ninputs = {batch=1}', ["key 'seed'", "wrong type"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nloss = "mse"', ["exactly one of 'data'"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nloss = "mse"\ninputs = {batch=0}', ["inputs.batch", "1..100000"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\nloss = "mse"\ninputs = {batch=2, size=3}', ["inputs.size", "unknown key"]),
    (GOOD + 'quantities = ["dL/dfoo"]\n', ["key 'quantities'", "unknown quantity 'dL/dfoo'", "dL/d0.weight"]),
    (GOOD + "quantities = []\n", ["key 'quantities'", "non-empty"]),
    (GOOD + 'quantities = ["sgd_step"]\n', ["needs a learning rate"]),
    ('network = [{ layer = "linear", in = 2, out = 3 }]\ninputs = {batch=1}\nquantities = ["dL/dx"]', ["needs a loss"]),
    (GOOD + 'engines = ["symbolic"]\n', ["key 'engines'", "at least two"]),
    (GOOD + 'engines = ["symbolic", "jax"]\n', ["unknown engine", "'jax'"]),
    (GOOD + "sgd = { lr = -1 }\n", ["sgd.lr", "positive"]),
    (GOOD + "tolerance = { rtol = 5 }\n", ["tolerance.rtol", "0 < rtol < 1"]),
    (GOOD + 'finite_diff = { method = "forward" }\n', ["finite_diff.method", "richardson, central"]),
    ('network = [{ layer = "linear", in = 2, out = 2 }]\nloss = "mse"\ninputs = { batch = 2, targets = ["x0 + y", "x1"] }', ["inputs.targets[0]", "unknown name 'y'"]),
    ('network = [{ layer = "linear", in = 2, out = 2 }]\nloss = "mse"\ninputs = { batch = 2, targets = ["__import__(\'os\')", "x1"] }', ["dunder name '__import__'"]),
    ('network = [{ layer = "linear", in = 2, out = 2 }]\nloss = "mse"\ninputs = { batch = 2, targets = ["x0"] }', ["inputs.targets", "2 formula string"]),
    ('network = [{ layer = "linear", in = 2, out = 1 }]\nloss = "mse"\ninputs = { batch = 3, targets = ["log(x0 - 100)"] }', ["inputs.targets[0]", "not finite at sample 0"]),
    ('network = [{ layer = "linear", in = 4, out = 3 }]\nloss = "cross_entropy"\ndata = { csv = "nope.csv", target = "species" }', ["data.csv", "data file not found", "nope.csv"]),
    ('network = [{ layer = "linear", in = 4, out = 3 }]\nloss = "cross_entropy"\ndata = { csv = "data.csv", target = "kind" }', ["data.target", "not in the CSV header"]),
    ('network = [{ layer = "linear", in = 3, out = 3 }]\nloss = "cross_entropy"\ndata = { csv = "data.csv", target = "species" }', ["data.features", "takes 3 input features but 4"]),
    ("name = [unclosed", ["not valid TOML"]),
    ('input_shape = [1, 0]\nnetwork = [{ layer = "flatten" }]\ninputs = {batch=1}', ["key 'input_shape'", "positive integers", "[1, 8, 8]"]),
    ('input_shape = [1, 5, 5]\nnetwork = [{ layer = "conv2d", in_channels = 1, out_channels = 2, kernel_size = 7 }]\ninputs = {batch=1}', ["key 'network'", "layer 0", "does not fit"]),
    ('network = [{ layer = "conv2d", in_channels = 1, out_channels = 2, kernel_size = 3 }]\ninputs = {batch=1}', ["input shape is unknown", "input_shape"]),
    ('input_shape = [4, 3]\nnetwork = [{ layer = "lstm", input_size = 3, hidden_size = 2, output = "all" }]\ninputs = {batch=1}', ["network[0]", "option 'output'", "'last' or 'sequence'"]),
    (GOOD + "clip = { max_norm = 0 }\n", ["clip.max_norm", "positive"]),
    (GOOD + 'quantities = ["clip_grad"]\n', ["needs a norm", "clip = { max_norm = 1.0 }"]),
    (
        'input_shape = [3]\nnetwork = [{ layer = "embedding", num_embeddings = 4, embedding_dim = 2 }, { layer = "flatten" }]\nloss = "mse"\ninputs = {batch=2}\nquantities = ["dL/dx"]',
        ["key 'quantities'", "inputs of embedding are indices"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_case_names_file_key_value_and_allowed(tmp_path, text, fragments):
    (tmp_path / "data.csv").write_text("a,b,c,d,species\n1,2,3,4,x\n5,6,7,8,y\n")
    path = write(tmp_path, text)
    with pytest.raises(CaseError) as info:
        load_case(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_csv_values(tmp_path):
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n1,oops,1\n")
    path = write(tmp_path, 'network = [{ layer = "linear", in = 2, out = 2 }]\nloss = "cross_entropy"\ndata = { csv = "data.csv", target = "label" }')
    with pytest.raises(CaseError, match=r"row 3, column 'b' is not a number \(got 'oops'\)"):
        load_case(path)
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n1,3,5\n")
    with pytest.raises(CaseError, match="class index 5 is outside 0..1"):
        load_case(path)


def test_missing_case_file(tmp_path):
    with pytest.raises(CaseError, match="case file not found"):
        load_case(tmp_path / "missing.toml")


def test_case_from_dict_without_file():
    case = case_from_dict({"network": [{"layer": "linear", "in": 2, "out": 2}], "loss": "mse", "inputs": {"batch": 2}})
    assert case.name == "case"
    with pytest.raises(CaseError, match="key 'network'"):
        case_from_dict({"network": [], "inputs": {"batch": 2}})


def test_shaped_case_defaults(tmp_path):
    """Default quantities leave out what does not exist: no dL/dx or dy/dx through an
    embedding's indices, no per-sample dy/dx through training-mode batch norm."""
    path = write(tmp_path, 'input_shape = [3]\nnetwork = [{ layer = "embedding", num_embeddings = 4, embedding_dim = 2 }, { layer = "flatten" }]\nloss = "mse"\ninputs = {batch=2}')
    case = load_case(path)
    assert case.quantities == ["L", "dL/dparams"]
    assert set(np.unique(case.problem.x)) <= {0.0, 1.0, 2.0, 3.0}
    path = write(tmp_path, 'network = [{ layer = "linear", in = 2, out = 3 }, { layer = "batch_norm1d", num_features = 3 }]\nloss = "mse"\ninputs = {batch=4}\nclip = { max_norm = 0.5 }')
    assert load_case(path).quantities == ["L", "dL/dparams", "dL/dx", "clip_grad"]
