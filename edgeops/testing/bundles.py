"""Bad bundles made from a good one: tampered, unsigned, wrongly signed."""

from __future__ import annotations

from pathlib import Path


def write_bad_bundles(
    root: Path, good: Path, signing_keys: tuple[Path, Path], keys_dir: Path
) -> tuple[Path, Path]:
    """Two bad variants of the bundle ``good`` in ``root``, for tests of updates and rollouts:
    ``rogue.bundle`` (the same contents signed by a new key, ``keys_dir/rogue.key``, that no
    device trusts) and ``corrupt.bundle`` (version 1.1.1, signed with ``signing_keys[0]``, whose
    sample outputs are wrong, so it fails a device's sample check). ``signing_keys`` is the
    (private, public) pair that signed ``good``."""
    import io

    import numpy as np

    from edgeops.core.bundle import RESERVED_KEYS, Bundle, write_bundle
    from edgeops.core.signing import generate_keypair, load_signing_key, load_verify_keys

    trusted = load_verify_keys([signing_keys[1]])
    with Bundle.open(good) as b:
        b.verify(trusted)
        manifest = {k: v for k, v in b.manifest.items() if k not in RESERVED_KEYS}
        contents = {n: b.read(n) for n in b.files}
    rogue, _ = generate_keypair(keys_dir, "rogue")
    write_bundle(root / "rogue.bundle", manifest, contents, key=load_signing_key(rogue))
    with np.load(io.BytesIO(contents["samples.npz"])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output_0"] = np.roll(arrays["output_0"], 1, axis=-1)  # the wrong answers
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bundle(
        root / "corrupt.bundle",
        {**manifest, "version": "1.1.1"},
        {**contents, "samples.npz": buf.getvalue()},
        key=load_signing_key(signing_keys[0]),
    )
    return root / "rogue.bundle", root / "corrupt.bundle"
