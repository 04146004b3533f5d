"""Tutorial 06 runs top to bottom in fast mode: a custom probe by name, in a sweep, shipped; then
a third-party model (tutorials/lookup_plugin) installed through its entry point and run through
memlens list, sweep, report, probe and temper."""

import re


def test_tutorial_06_runs(run_tutorial, tmp_path):
    out = run_tutorial("06_write_your_own_probe.py")
    # part 1: the probe
    assert "'firing'" in out  # registered by the decorator
    assert out.count("frac_active") >= 3  # probing() summary and both sweep cells
    assert "my_probes.firing:FiringProbe" in out  # found through the entry point

    # part 2: the model, found through its entry point, by every command
    assert re.search(r"^\s+lookup\s+entry point memlens_lookup:BUNDLE\s+presets: smoke", out, re.M)
    assert "# Sweep summary: lookup" in out
    table = {
        int(m.group(1)): [float(v) for v in m.group(2).split("|")[:5]]
        for m in re.finditer(r"^\| (\d+) \| (.*) \|$", out, re.M)
    }
    # T, train_loss, test_loss, weight_norm.total, dictionary.coverage, read-back
    assert table[8][0] < 1e-6 and table[256][0] > 0.1  # memorises 8 points in 32 slots, not 256
    assert table[8][3] == 1 and table[8][4] == 1  # the table, read back
    assert table[256][3] < 0.5
    assert "lookup dictionary" in out and "coverage 100%, read-back 100%: a lookup table" in out
    assert "dimensionality at hook_attn: 1 instance(s), T=8" in out  # the plugin's hook
    assert "(Σ D*=8)" in out  # 8 points in general position: rank 8
    assert "circuit survival" in out and "slot: 8 active" in out  # one slot per memorised point
    assert "circuits followed: ['slot:0', 'slot:1', 'slot:2'] ... ['datum:6', 'datum:7']" in out
    assert out.rstrip().endswith(
        '[project.entry-points."memlens.models"]\nlookup = "memlens_lookup:BUNDLE"'
    )
