"""Pickles and joblib files: never executed, classes and estimator parameters shown, limits hold."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from gitmld.daemon.describe.pickle_scan import ScanLimits, scan
from gitmld.daemon.describe.readers import BytesReader, Cursor, FileReader
from gitmld.daemon.describe.registry import describe


def lines_of(data: bytes) -> dict[str, str]:
    return dict(describe(BytesReader(data)))


class Evil:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_is_named_and_never_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"payload": Evil(str(marker))}, protocol=protocol))
    with FileReader(path) as r:
        lines = dict(describe(r))
    assert not marker.exists()
    assert lines["format"] == "pickle"
    assert lines["unsafe"] == f"{os.system.__module__}.system"  # posix.system on Linux
    assert lines["classes"] == lines["unsafe"]


def test_plain_values_and_arrays():
    data = pickle.dumps({"weights": np.zeros((3, 2), np.float32), "names": ["a"], "epochs": 3}, protocol=4)
    lines = lines_of(data)
    assert lines["values"] == "epochs=3"
    assert ("tensor", "weights F32 3x2") in describe(BytesReader(data))


def test_large_inline_bytes_are_skipped_not_read():
    big = np.zeros(2**20, np.float64)  # 8 MiB inline in the pickle
    reader = BytesReader(pickle.dumps({"a": big}, protocol=4))
    assert ("tensor", "a F64 1048576") in describe(reader)
    assert reader.bytes_read < 2**20


def test_sklearn_estimator_pickle_and_joblib(tmp_path):
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    joblib = pytest.importorskip("joblib")
    rng = np.random.RandomState(0)
    x, y = rng.rand(30, 4), np.arange(30) % 2
    model = sklearn_linear.LogisticRegression(C=0.5, max_iter=50).fit(x, y)
    import sklearn

    results = {}
    for kind in ("pickle", "joblib", "joblib-zlib", "joblib-gzip", "joblib-xz"):
        path = tmp_path / kind
        if kind == "pickle":
            path.write_bytes(pickle.dumps(model))
        else:
            compress = {"joblib": 0, "joblib-zlib": ("zlib", 3), "joblib-gzip": ("gzip", 3), "joblib-xz": ("xz", 3)}
            joblib.dump(model, path, compress=compress[kind])
        with FileReader(path) as r:
            results[kind] = dict(describe(r))
        lines = results[kind]
        assert lines["format"] == ("pickle" if kind == "pickle" else "joblib")
        assert lines["object"] == "sklearn.linear_model._logistic.LogisticRegression"
        assert "C=0.5" in lines["object-params"] and "max_iter=50" in lines["object-params"]
        assert lines["versions"] == f"sklearn={sklearn.__version__}"
        assert lines["tensors"] == "4" and "unsafe" not in lines
    assert results["joblib-xz"]["compression"] == "xz" and results["joblib-gzip"]["compression"] == "gzip"
    tensors = [v for k, v in describe(BytesReader((tmp_path / "joblib").read_bytes())) if k == "tensor"]
    assert tensors == ["classes_ I64 2", "coef_ F64 1x4", "intercept_ F64 1", "n_iter_ I32 1"]


def test_joblib_object_arrays_and_alignment(tmp_path):
    joblib = pytest.importorskip("joblib")
    value = {"obj": np.array([Evil(str(tmp_path / "m")), None], dtype=object), "f": np.ones((5, 7), np.float32)}
    joblib.dump(value, tmp_path / "v.joblib")
    with FileReader(tmp_path / "v.joblib") as r:
        lines = describe(r)
    assert not (tmp_path / "m").exists()
    d = dict(lines)
    assert d["format"] == "joblib" and "posix.system" in d["unsafe"]
    assert [v for k, v in lines if k == "tensor"] == ["f F32 5x7", "obj OBJECT 2"]


def test_xgboost_model_shows_its_version_and_params():
    xgboost = pytest.importorskip("xgboost")
    x, y = np.random.RandomState(1).rand(20, 3), np.arange(20) % 2
    model = xgboost.XGBClassifier(n_estimators=2, max_depth=2).fit(x, y)
    lines = lines_of(pickle.dumps(model))
    assert lines["object"] == "xgboost.sklearn.XGBClassifier"
    assert "max_depth=2" in lines["object-params"] and "n_estimators=2" in lines["object-params"]
    assert lines["versions"] == f"xgboost={xgboost.__version__}"


def test_deep_nesting_stops_cleanly():
    marks = b"\x80\x02" + b"(" * 50_000
    assert "MARK" in lines_of(marks)["note"]
    lists = b"\x80\x02" + b"]" * 60_000 + b"a" * 59_999 + b"."  # a list nested 60k deep
    lines = lines_of(lists)
    assert lines["format"] == "pickle" and lines["tensors"] == "0"


def test_truncated_and_absurd_lengths():
    absurd = b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"."
    assert "skip" in lines_of(absurd)["note"]
    truncated = pickle.dumps({"a": np.zeros(3)}, protocol=4)[:-30]
    lines = lines_of(truncated)
    assert lines["format"] == "pickle" and "scan stopped" in lines["note"]


def test_scan_limits_are_enforced():
    data = pickle.dumps(list(range(1000)), protocol=4)
    result = scan(Cursor(BytesReader(data)), limits=ScanLimits(max_items=100))
    assert result.stopped and "100 items" in result.stopped


def test_random_bytes_after_a_pickle_header_fall_back():
    lines = lines_of(b"\x80\x04" + bytes(range(256)) * 4)
    assert lines["format"] in ("pickle", "unknown") and "note" in lines


def test_protocol_0_text_is_not_mistaken_for_a_pickle():
    assert lines_of(b"(hello world) is just text\n") == {"format": "text"}


def test_describing_twice_is_identical():
    data = io.BytesIO()
    pickle.dump({"b": np.zeros(2), "a": np.ones((1, 1), np.int8), "c": 1.5}, data, protocol=4)
    assert describe(BytesReader(data.getvalue())) == describe(BytesReader(data.getvalue()))
