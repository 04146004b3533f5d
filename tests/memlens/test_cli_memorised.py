"""`memlens memorised CKPT`: ranks the training points by every detector and, when the recipe
planted points, scores each detector against them and draws the ROC figure."""

import json
import re

from memlens.cli import main


def test_memorised_command_scores_planted_points(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    args = ["train", "--model", "bottleneck", "--preset", "smoke", "--T", "60"]
    assert main([*args, "--set", "plant_private=3", "--out", str(ckpt), "--no-progress"]) == 0
    capsys.readouterr()
    out_json, fig = tmp_path / "m.json", tmp_path / "roc.png"
    cmd = ["memorised", str(ckpt), "--detectors", "train_loss,dstar", "--no-progress"]
    assert main([*cmd, "--json", str(out_json), "--figure", str(fig)]) == 0
    stdout = capsys.readouterr().out
    assert "3 planted point(s)" in stdout
    assert re.search(r"dstar:hook_in\s+AUROC 1\.00", stdout)  # private features: the data
    data = json.loads(out_json.read_text())
    planted = data["planted"][0]
    assert sum(planted) == 3 and len(planted) == 60
    # the ranks in the JSON are a permutation of 1..T for every detector
    for r in data["ranks"].values():
        assert sorted(r[0]) == list(range(1, 61))
    assert fig.stat().st_size > 10_000


def test_memorised_command_refuses_unknown_detectors_before_loading(tmp_path, capsys):
    ckpt = tmp_path / "missing.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert main(["memorised", str(ckpt), "--detectors", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
