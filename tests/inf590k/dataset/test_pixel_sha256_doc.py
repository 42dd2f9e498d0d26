"""`pixel_sha256` recomputed from a real sample with the snippet the card and the README show."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from inf590k.build.shard import ShardConfig
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ir_samples):
    root = tmp_path_factory.mktemp("pixelsha")
    build = make_build(root, ir_samples)
    shard_dataset(
        ShardConfig(build=build, out=root / "ds", execution=ExecutionOptions(workers=1, progress=False))
    )
    return root / "ds"


def samples(dataset, limit: int = 4) -> list[dict]:
    """Samples as `datasets` gives them: `png` a PIL "L" image, `json` a dict."""
    found = []
    for tar_path in sorted((dataset / "data").rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in sorted(members.items()):
            if name.endswith(".json"):
                png = members[name[: -len("json")] + "png"]
                found.append({"json": json.loads(data), "png": Image.open(io.BytesIO(png))})
    return found[:limit]


def python_blocks(text: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return ["\n".join(line.strip() for line in b.splitlines()) for b in blocks]


def snippet_in(text: str) -> str:
    """The two documented lines: `pixels = ...` and the assert that recomputes the digest."""
    block = next(b for b in python_blocks(text) if "pixel_sha256" in b)
    return "\n".join(line for line in block.splitlines() if line.startswith(("pixels =", "assert ")))


@pytest.mark.parametrize("where", ["card", "README"])
def test_the_documented_snippet_recomputes_pixel_sha256(dataset, where):
    text = (dataset / "README.md").read_text() if where == "card" else (REPO_ROOT / "README.md").read_text()
    code = snippet_in(text)
    assert len(code.strip().splitlines()) == 2
    assert 'sha256("HxW:" + pixels)' in text
    checked = 0
    for sample in samples(dataset):
        names = {"sample": sample, "hashlib": hashlib, "np": np}
        exec(compile(code, f"<{where}>", "exec"), names)  # noqa: S102 (our own documentation)
        checked += 1
    assert checked >= 2
    plain = np.asarray(samples(dataset)[0]["png"])  # what a reader would try first
    assert hashlib.sha256(plain.tobytes()).hexdigest() != samples(dataset)[0]["json"]["pixel_sha256"]


def test_the_snippet_catches_a_changed_pixel(dataset):
    code = snippet_in((dataset / "README.md").read_text())
    sample = samples(dataset, 1)[0]
    pixels = np.asarray(sample["png"]).copy()
    pixels[0, 0] ^= 1
    sample["png"] = Image.fromarray(pixels)
    with pytest.raises(AssertionError):
        exec(compile(code, "<card>", "exec"), {"sample": sample, "hashlib": hashlib, "np": np})  # noqa: S102
