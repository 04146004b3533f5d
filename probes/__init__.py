"""Built-in probes. They are plugins: memlens finds them through the ``memlens.probes``
entry-point group in ``pyproject.toml``, exactly as it finds a third party's."""
