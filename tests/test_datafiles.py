from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeops.core import datafiles
from edgeops.core.errors import InputDataError
from edgeops.core.tensors import TensorInfo

IMAGE = TensorInfo("image", (-1, 8, 8, 1), "float32")


def test_npz_with_labels(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 8, 8, 1)), y=np.arange(5))
    ds = datafiles.load(p)
    assert ds.x.shape == (5, 8, 8, 1) and ds.y is not None and len(ds) == 5
    assert datafiles.check_inputs(ds, IMAGE, "data").dtype == np.float32


def test_npy_and_csv(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((3, 4), dtype=np.float32))
    assert datafiles.load(tmp_path / "a.npy").y is None
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n3,,1\n")
    ds = datafiles.load(tmp_path / "t.csv")
    assert ds.x.shape == (2, 2) and np.isnan(ds.x[1, 1])
    assert ds.y is not None and ds.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.npz", b"not a zip", "not a readable .npz"),
        ("bad.npy", b"garbage", "not a readable .npy"),
        ("bad.csv", b"a,b\n1,x\n", "is not a number"),
        ("short.csv", b"a,b\n1\n", "has 1 fields"),
        ("data.txt", b"1 2 3", "unsupported data file type"),
    ],
)
def test_bad_files_say_what_is_wrong(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputDataError, match=message):
        datafiles.load(p)


def test_string_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(InputDataError, match="expected numbers"):
        datafiles.load(tmp_path / "s.npy")


def test_shape_mismatch_names_the_expected_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((4, 64), dtype=np.float32))
    with pytest.raises(InputDataError, match=r"shape \(64,\).*expects \(8, 8, 1\)"):
        datafiles.check_inputs(datafiles.load(tmp_path / "flat.npy"), IMAGE, "calibration data")


def test_nan_inputs_are_refused(tmp_path: Path) -> None:
    x = np.zeros((2, 8, 8, 1), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(InputDataError, match="NaN"):
        datafiles.check_inputs(datafiles.load(tmp_path / "n.npy"), IMAGE, "calibration data")


def test_csv_is_read_by_the_one_csv_reader(tmp_path: Path) -> None:
    """Missing cells as the trainer reads them (empty, na, ?), a text cell named by line and
    column, an empty column as NaN, labels alone refused."""
    from edgeops.core import datafiles

    f = tmp_path / "a.csv"
    f.write_text("f1,f2,label\n1,2,0\n3,,1\n5,na,1\n7,?,0\n")
    ds = datafiles.load(f)
    assert ds.x.shape == (4, 2) and np.isnan(ds.x[1:, 1]).all() and ds.y is not None
    assert ds.y.tolist() == [0, 1, 1, 0]
    f.write_text("f1,f2,label\n1,2,0\n3,abc,1\n")
    with pytest.raises(InputDataError, match=r"line 3, column 'f2': 'abc' is not a number"):
        datafiles.load(f)
    f.write_text("f1,f2\n1,\n3,\n")
    assert np.isnan(datafiles.load(f).x[:, 1]).all()
    f.write_text("label\n1\n0\n")
    with pytest.raises(InputDataError, match="labels only"):
        datafiles.load(f)
