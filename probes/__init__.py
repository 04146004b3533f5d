"""Built-in probes. They are plugins: memlens finds them through the ``memlens.probes``
entry-point group in ``pyproject.toml``, exactly as it finds a third party's.

Each probe class carries its own registration metadata, which the core reads and never spells out:
``default`` (a sweep runs it when no probes are named), ``supports(bundle)`` and ``requires`` (the
models it can read, and what the others lack; a sweep skips them, saying so) and
``sweep_report(view, label)`` (its columns, figures and phase panels in a sweep's report; the
built-in curves are in :mod:`probes.sweep_curves`)."""
