"""Baseline profiles: what a model's inputs and outputs looked like when it was trained.

A :class:`Profile` travels in the bundle. The device agent summarises its telemetry windows with
the same statistics (:mod:`edgeops.core.stats`: bins, category counts, moments, tensor reductions)
and the profile's parameters: the edges of each numeric feature, the categories of each categorical
one, the reductions of each tensor input and the confidence edges of a classifier's output; the
service compares the two.

Bins are open at both ends and a value equal to an edge falls in the bin above it; NaN is missing
(see :mod:`edgeops.core.stats`). ``to_dict()`` is JSON-safe (lists, finite floats, None for the
missing statistics of an empty feature) and every ``from_dict()`` raises ValueError naming the bad
entry.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edgeops.core.stats import (
    CONFIDENCE_EDGES,
    TENSOR_SAMPLE,
    FloatArray,
    Moments,
    as_floats,
    baseline_edges,
    bin_counts,
    category_keys,
    check_edges,
    check_n_bins,
    check_reductions,
    class_output_counts,
    count_keys,
    gather_rows,
    kurtosis,
    reduce_rows,
    reduce_tensor,
    reduced_names,
    resolve_channels_last,
)

T = TypeVar("T")


@dataclass(frozen=True)
class NumericProfile:
    """Bin counts (open tails, ties go up: see :mod:`edgeops.core.stats`), NaN count, moments and
    the kurtosis (which the scale test of :mod:`edgeops.drift` needs; None in profiles made
    before it was recorded, or for fewer than two distinct values).

    ``to_dict()``: ``{"kind": "numeric", "name", "edges": [float], "counts": [int] (one more
    than edges), "missing": int, "moments": Moments.to_dict(), "kurtosis": float | null}``;
    ``from_dict`` accepts a dict without ``kurtosis`` (older bundles), and readers that predate
    it ignore the key.
    """

    KIND: ClassVar[str] = "numeric"
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    missing: int
    moments: Moments
    kurtosis: float | None = None

    def __post_init__(self) -> None:
        check_edges(self.edges)
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.counts)} counts for {len(self.edges)} edges")
        _check_counts((*self.counts, self.missing))
        if self.kurtosis is not None and not (math.isfinite(self.kurtosis) and self.kurtosis >= 1):
            raise ValueError(f"kurtosis must be finite and at least 1, got {self.kurtosis!r}")

    @property
    def probs(self) -> FloatArray:
        """The share of the non-missing values in each bin (zeros when there are none)."""
        return _probs(self.counts)

    @property
    def blind_spot(self) -> str | None:
        """Why drift of this feature cannot (fully) show, or None when it can.

        ``"no values"``: the baseline holds no finite value, so only its missing rate can be
        tested. ``"one open bin"``: every baseline value sits in one open tail bin (quantile
        edges of a mostly constant feature, as profiles made before tie-aware edges have), so
        a change inside that tail moves no count and only the moments can show it."""
        if self.moments.count == 0:
            return "no values"
        filled = [i for i, c in enumerate(self.counts) if c > 0]
        if len(filled) == 1 and filled[0] in (0, len(self.counts) - 1):
            return "one open bin"
        return None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile") -> NumericProfile:
        return _read(
            cls,
            d,
            where,
            optional={"kurtosis": _optional_float},
            name=_str,
            edges=_floats,
            counts=_ints,
            missing=_int,
            moments=Moments.from_dict,
        )


@dataclass(frozen=True)
class CategoricalProfile:
    """Counts per category, of other values and of missing ones (None, ``""``, NaN).

    ``to_dict()``: ``{"kind": "categorical", "name", "categories": [str], "counts": [int],
    "other": int, "missing": int}``.
    """

    KIND: ClassVar[str] = "categorical"
    name: str
    categories: tuple[str, ...]
    counts: tuple[int, ...]
    other: int
    missing: int

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.categories):
            raise ValueError(f"{len(self.counts)} counts for {len(self.categories)} categories")
        if len(set(self.categories)) != len(self.categories) or "" in self.categories:
            raise ValueError("categories must be unique and non-empty")
        _check_counts((*self.counts, self.other, self.missing))

    @property
    def probs(self) -> FloatArray:
        """Shares of the non-missing values over ``categories`` then other (zeros if none)."""
        return _probs((*self.counts, self.other))

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile") -> CategoricalProfile:
        return _read(
            cls, d, where, name=_str, categories=_strs, counts=_ints, other=_int, missing=_int
        )


@dataclass(frozen=True)
class TensorProfile:
    """An input with many elements (an image), profiled through per-sample reductions.

    ``shape`` is the sample shape (without the batch axis); ``features`` hold one
    :class:`NumericProfile` per result of :func:`reduce_tensor`, in its order. The agent calls
    :meth:`reduce` on its inputs and bins each result in the matching feature's edges.

    ``sample``: the elements per channel the reductions read (a fixed subset,
    :func:`~edgeops.core.stats.sample_indices`), the same in the baseline and on the device; None
    (older profiles) reads every element.

    ``to_dict()``: ``{"kind": "tensor", "name", "shape": [int], "reductions": [str],
    "channels_last": bool, "features": [NumericProfile.to_dict()], "sample": int | absent}``.
    """

    KIND: ClassVar[str] = "tensor"
    name: str
    shape: tuple[int, ...]
    reductions: tuple[str, ...]
    channels_last: bool
    features: tuple[NumericProfile, ...]
    sample: int | None = None

    def __post_init__(self) -> None:
        check_reductions(self.reductions)
        if self.sample is not None and self.sample < 1:
            raise ValueError("sample must be at least 1 element")
        n_channels = self.shape[-1] if self.channels_last and self.shape else 1
        expected = reduced_names(self.reductions, n_channels)
        if tuple(f.name for f in self.features) != expected:
            raise ValueError(f"features must be named {list(expected)}")

    def reduce(self, x: npt.ArrayLike) -> dict[str, FloatArray]:
        """:func:`reduce_tensor` with this profile's settings; checks rank and channels."""
        return self.reduce_gathered(self.gather(x))

    def gather(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """The elements of a batch that the reductions read, ``[N, L, C]`` (the subset when
        ``sample`` is set: what a device keeps of an input until it reduces it)."""
        a = np.asarray(x)
        if a.ndim != len(self.shape) + 1 or (self.channels_last and a.shape[-1] != self.shape[-1]):
            raise ValueError(f"{self.name!r}: expected samples like {self.shape}, got {a.shape}")
        return gather_rows(a, channels_last=self.channels_last, sample=self.sample)

    def reduce_gathered(self, rows: npt.NDArray[Any]) -> dict[str, FloatArray]:
        """The reductions of :meth:`gather`'s rows."""
        return reduce_rows(rows, self.reductions)

    def feature(self, name: str) -> NumericProfile:
        return _lookup(self.features, name)

    def to_dict(self) -> dict[str, Any]:
        d = _to_dict(self)
        if d["sample"] is None:  # read every element: as profiles before the key existed
            del d["sample"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile") -> TensorProfile:
        return _read(
            cls,
            d,
            where,
            name=_str,
            shape=_ints,
            optional={"sample": _int},
            reductions=_strs,
            channels_last=_bool,
            features=_numeric_profiles,
        )


@dataclass(frozen=True)
class ClassOutputProfile:
    """A classifier's output: predicted-class counts, and counts of the confidence (the top
    probability) in ``confidence_edges`` (:data:`CONFIDENCE_EDGES` from the profiling functions).

    ``to_dict()``: ``{"kind": "class_output", "name", "labels": [str], "class_counts": [int],
    "confidence_edges": [float], "confidence_counts": [int]}``.
    """

    KIND: ClassVar[str] = "class_output"
    name: str
    labels: tuple[str, ...]
    class_counts: tuple[int, ...]
    confidence_edges: tuple[float, ...]
    confidence_counts: tuple[int, ...]

    def __post_init__(self) -> None:
        check_edges(self.confidence_edges)
        if len(self.class_counts) != len(self.labels) or len(self.labels) < 2:
            raise ValueError("need two or more labels and one class count per label")
        if len(self.confidence_counts) != len(self.confidence_edges) + 1:
            raise ValueError("need one more confidence count than confidence edges")
        _check_counts((*self.class_counts, *self.confidence_counts))

    @property
    def class_probs(self) -> FloatArray:
        return _probs(self.class_counts)

    @property
    def confidence_probs(self) -> FloatArray:
        return _probs(self.confidence_counts)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "profile") -> ClassOutputProfile:
        return _read(
            cls,
            d,
            where,
            name=_str,
            labels=_strs,
            class_counts=_ints,
            confidence_edges=_floats,
            confidence_counts=_ints,
        )


InputProfile = NumericProfile | CategoricalProfile | TensorProfile
OutputProfile = ClassOutputProfile | NumericProfile
_INPUT_KINDS: dict[str, Callable[[Any, str], InputProfile]] = {
    c.KIND: c.from_dict for c in (NumericProfile, CategoricalProfile, TensorProfile)
}
_OUTPUT_KINDS: dict[str, Callable[[Any, str], OutputProfile]] = {
    c.KIND: c.from_dict for c in (ClassOutputProfile, NumericProfile)
}


@dataclass(frozen=True)
class Profile:
    """The baseline of a model: its inputs and outputs, profiled with ``n_bins`` quantile bins.

    ``to_dict()``: ``{"version": 1, "n_bins": int, "inputs": [...], "outputs": [...]}``, each
    entry the ``to_dict()`` of its profile, tagged by ``"kind"`` (inputs: ``numeric``,
    ``categorical``, ``tensor``; outputs: ``class_output``, ``numeric``).
    """

    VERSION: ClassVar[int] = 1
    inputs: tuple[InputProfile, ...]
    outputs: tuple[OutputProfile, ...] = ()
    n_bins: int = 10

    def __post_init__(self) -> None:
        check_n_bins(self.n_bins)
        for part in (self.inputs, self.outputs):
            names = [p.name for p in part]
            if len(set(names)) != len(names):
                raise ValueError(f"profile names must be unique, got {names}")

    def input(self, name: str) -> InputProfile:
        return _lookup(self.inputs, name)

    def blind_spots(self) -> dict[str, str]:
        """Every numeric input (tensor reductions as ``"image:mean[c0]"``) and output whose
        drift cannot fully show, with the reason (:attr:`NumericProfile.blind_spot`)."""
        found: dict[str, str] = {}
        for p in (*self.inputs, *self.outputs):
            parts = (
                [(f"{p.name}:{f.name}", f) for f in p.features]
                if isinstance(p, TensorProfile)
                else [(p.name, p)]
            )
            for name, part in parts:
                reason = part.blind_spot if isinstance(part, NumericProfile) else None
                if reason is not None:
                    found[name] = reason
        return found

    def output(self, name: str) -> OutputProfile:
        return _lookup(self.outputs, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "n_bins": self.n_bins,
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        """The inverse of :meth:`to_dict`; ValueError naming the bad entry on a malformed dict."""
        d = _mapping(d, "profile")
        if d.get("version") != cls.VERSION:
            raise ValueError(f"profile.version: expected {cls.VERSION}, got {d.get('version')!r}")

        def entries(part: str, kinds: Mapping[str, Callable[[Any, str], T]]) -> tuple[T, ...]:
            out = []
            for i, entry in enumerate(_list(d.get(part), f"profile.{part}")):
                where = f"profile.{part}[{i}]"
                kind = _mapping(entry, where).get("kind")
                if not isinstance(kind, str) or kind not in kinds:
                    raise ValueError(f"{where}.kind: expected one of {list(kinds)}, got {kind!r}")
                out.append(kinds[kind](entry, where))
            return tuple(out)

        inputs, outputs = entries("inputs", _INPUT_KINDS), entries("outputs", _OUTPUT_KINDS)
        return _build(
            "profile", lambda: cls(inputs, outputs, _int(d.get("n_bins"), "profile.n_bins"))
        )


def profile_numeric(name: str, values: npt.ArrayLike, n_bins: int = 10) -> NumericProfile:
    """Tie-aware edges (:func:`~edgeops.core.stats.baseline_edges`), bin counts, NaN count, moments
    and kurtosis of a numeric feature."""
    v = as_floats(values)
    edges = baseline_edges(v, n_bins)
    counts, missing = bin_counts(v, edges)
    return NumericProfile(
        name, tuple(edges.tolist()), tuple(counts.tolist()), missing, Moments.of(v), kurtosis(v)
    )


def profile_categorical(
    name: str,
    values: Iterable[Any],
    categories: Sequence[str] | None = None,
    *,
    max_categories: int | None = None,
) -> CategoricalProfile:
    """Counts of a categorical feature; values are compared as ``str(v)``.

    Without ``categories`` every value seen is a category, by descending count then by name; with
    ``max_categories`` only that many of the most frequent, and the rest count as ``other``.
    """
    keys = category_keys(values)
    if max_categories is not None and max_categories < 1:
        raise ValueError(f"max_categories must be at least 1, got {max_categories}")
    if categories is None:
        seen = Counter(k for k in keys if k is not None)
        categories = sorted(seen, key=lambda c: (-seen[c], c))[:max_categories]
    categories = [str(c) for c in categories]
    counts, other, missing = count_keys(keys, categories)
    return CategoricalProfile(name, tuple(categories), tuple(counts.tolist()), other, missing)


def profile_tensor(
    name: str,
    x: npt.ArrayLike,
    n_bins: int = 10,
    reductions: Sequence[str] = ("mean", "std"),
    *,
    channels_last: bool | None = None,
    sample: int | None = TENSOR_SAMPLE,
) -> TensorProfile:
    """Profiles of :func:`reduce_tensor`'s per-sample scalars of ``x``, one per name (over a
    fixed subset of ``sample`` elements per channel when a channel has more; None: all)."""
    a = np.asarray(x)
    last = resolve_channels_last(a.shape, channels_last)
    channels = a.shape[-1] if last else 1
    length = math.prod(a.shape[1:]) // max(channels, 1)
    used = sample if sample is not None and length > sample else None
    reduced = reduce_tensor(a, reductions, channels_last=channels_last, sample=used)
    return TensorProfile(
        name,
        tuple(int(s) for s in a.shape[1:]),
        tuple(reductions),
        last,
        tuple(profile_numeric(k, v, n_bins) for k, v in reduced.items()),
        used,
    )


def profile_class_outputs(
    probs: npt.ArrayLike, labels: Sequence[str], *, name: str = "class"
) -> ClassOutputProfile:
    """A classifier's output profile from its probabilities (see :func:`class_output_counts`)."""
    classes, confidence = class_output_counts(probs, len(labels))
    return ClassOutputProfile(
        name,
        tuple(labels),
        tuple(classes.tolist()),
        CONFIDENCE_EDGES,
        tuple(confidence.tolist()),
    )


def profile_regression_outputs(
    name: str, y: npt.ArrayLike, n_bins: int = 10
) -> tuple[NumericProfile, ...]:
    """One profile per output column: ``name`` for ``[N]`` or ``[N, 1]``, else ``name[j]``."""
    a = np.asarray(y, dtype=np.float64)
    if a.ndim not in (1, 2):
        raise ValueError(f"expected regression outputs [N] or [N, K], got shape {a.shape}")
    if a.ndim == 1 or a.shape[1] == 1:
        return (profile_numeric(name, a, n_bins),)
    return tuple(profile_numeric(f"{name}[{j}]", a[:, j], n_bins) for j in range(a.shape[1]))


# Helpers: shares, checks, lookups, and the typed reading and writing of dicts.


def _probs(counts: Sequence[int]) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def _check_counts(counts: Sequence[int]) -> None:
    if any(c < 0 for c in counts):
        raise ValueError("counts must not be negative")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _lookup(items: Sequence[N], name: str) -> N:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no profile named {name!r}; there are {[i.name for i in items]}")


def _to_dict(record: Any) -> dict[str, Any]:
    """``{"kind": KIND}`` then the record's fields: tuples as lists, records as their dicts."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v.to_dict() if hasattr(v, "to_dict") else v

    return {"kind": record.KIND} | {f.name: plain(getattr(record, f.name)) for f in fields(record)}


def _build(where: str, make: Callable[[], T]) -> T:
    try:
        return make()
    except ValueError as e:
        own = str(e).startswith((f"{where}.", f"{where}:", f"{where}["))
        raise ValueError(e if own else f"{where}: {e}") from None


def _read(
    cls: type[T],
    d: Any,
    where: str,
    optional: Mapping[str, Callable[[Any, str], Any]] | None = None,
    **readers: Callable[[Any, str], Any],
) -> T:
    """``cls(**fields)``, each field read from ``d[key]`` by its reader (value, path); the
    ``optional`` fields only when ``d`` has them (else the field's default)."""
    d = _mapping(d, where)
    missing = [k for k in readers if k not in d]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    values = {k: read(d[k], f"{where}.{k}") for k, read in readers.items()}
    values |= {k: read(d[k], f"{where}.{k}") for k, read in (optional or {}).items() if k in d}
    return _build(where, lambda: cls(**values))


def _mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(v).__name__}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
    return list(v)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}: expected a non-negative integer, got {v!r}")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _optional_float(v: Any, where: str) -> float | None:
    return None if v is None else _float(v, where)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: expected a string, got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{where}: expected true or false, got {v!r}")
    return v


def _ints(v: Any, where: str) -> tuple[int, ...]:
    return tuple(_int(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where)))


def _floats(v: Any, where: str) -> tuple[float, ...]:
    return tuple(_float(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where)))


def _strs(v: Any, where: str) -> tuple[str, ...]:
    return tuple(_str(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where)))


def _numeric_profiles(v: Any, where: str) -> tuple[NumericProfile, ...]:
    items = _list(v, where)
    return tuple(NumericProfile.from_dict(x, f"{where}[{i}]") for i, x in enumerate(items))
