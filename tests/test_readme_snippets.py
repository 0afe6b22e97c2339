"""The README's code snippets run as written (issue 29: the DeepFacto snippet could not be trained)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(after: str, starts_with: str) -> str:
    """The first ```python block of the README after the heading or text `after` that starts with `starts_with`."""
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[text.index(after):], flags=re.S)
    return next(b for b in blocks if b.startswith(starts_with))


def test_the_deepfacto_snippet_trains_as_written():
    torch.manual_seed(0)
    scope = {}
    exec(snippet("## DeepFacto: an NMF layer inside the network", "import torch"), scope)
    trainer, codes = scope["trainer"], scope["codes"]
    first = trainer.history[-1]["test_acc"]
    assert type(trainer.blocks[1]).__name__ == "NMFBlock" and trainer.blocks[1].W is scope["nmf"].W
    assert [c.kind for c in trainer.constraints] == ["nonneg", "nonneg"]
    assert first > 0.8 and scope["history"][-1]["test_acc"] > 0.9, (first, scope["history"][-1]["test_acc"])
    assert codes.shape == (len(scope["splits"].test), 50) and bool((codes >= 0).all())


def test_the_binary_snippet_builds_its_trainer():
    from blockadmm import BlockADMM
    from blockadmm.binary import BinaryBlock

    scope = {"BlockADMM": BlockADMM}
    exec(snippet("Binary {0, 1} hidden units", "from blockadmm.binary"), scope)
    trainer = scope["trainer"]
    assert [type(b).__name__ for b in trainer.blocks] == ["BinaryBlock", "BinaryBlock", "Linear"]
    assert isinstance(trainer.blocks[0], BinaryBlock) and trainer.blocks[0].surrogate == "ste"
    assert trainer.config.rho == 2.0 and trainer.config.sweeps == 2
    stats = trainer.step(torch.rand(32, 784), torch.randint(0, 10, (32,)))
    assert stats.loss > 0
