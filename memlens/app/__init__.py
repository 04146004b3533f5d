"""The application layer: the demos and README tooling built on memlens, above the built-in
probes and models (which it may name), beside the CLI. The core (everything else in ``memlens``)
never imports it.

* :mod:`memlens.app.quickstart`: ``memlens quickstart``, the whole story on embedded defaults;
* :mod:`memlens.app.quickstart_report`: its rules, report and the README section
  (``scripts/update_readme.py``).
"""
