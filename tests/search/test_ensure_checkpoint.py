"""The checkpoint a search trains when its file is missing."""

from __future__ import annotations

import torch

from models.checkpoint import load_checkpoint
from search.spec import load_spec
from search.study import ensure_checkpoint
from tests.search.conftest import write_spec


def _train_missing_checkpoint(folder, *, seed):
    folder.mkdir()
    checkpoint = folder / "cnn1.pt"
    spec_path = write_spec(folder, checkpoint, n_trials=1, extra="[train]\nepochs = 1\n")
    text = spec_path.read_text().replace("seed = 0", f"seed = {seed}", 1)
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    assert ensure_checkpoint(spec, progress=False) == checkpoint
    model, _ = load_checkpoint(checkpoint, network="cnn1")
    return model.state_dict()


def test_ensure_checkpoint_same_seed_same_weights(tmp_path):
    # Whatever state PyTorch's global generator is in, the spec's seed decides the weights.
    torch.manual_seed(1)
    first = _train_missing_checkpoint(tmp_path / "first", seed=0)
    torch.manual_seed(2)
    second = _train_missing_checkpoint(tmp_path / "second", seed=0)
    other = _train_missing_checkpoint(tmp_path / "other", seed=1)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[name], other[name]) for name in first)
