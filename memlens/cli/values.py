"""Parsing command-line values and checking output paths, before any work is done.

Every parser raises ``argparse.ArgumentTypeError`` (argparse turns it into a one-line usage error
naming the option); the path checks raise ``ValueError`` naming the option and the path.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from memlens.validate import check_output_dir, check_output_file

__all__ = [
    "csv",
    "positive",
    "non_negative",
    "step_size",
    "setting",
    "probe_arg",
    "json_value",
    "check_output_file",
    "check_output_dir",
    "probe_specs",
]


def json_value(text: str) -> Any:
    """A JSON value (number, true/false, null, list) or, failing that, the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _number(kind, text: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an int' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def csv(kind):
    """A comma-separated list of ``kind`` values."""

    def parse(text: str):
        try:
            vals = [_number(kind, v.strip()) for v in text.split(",") if v.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}: {exc}"
            ) from None
        if not vals:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            )
        return vals

    parse.__name__ = f"comma-separated {kind.__name__}s"
    return parse


def positive(kind):
    def parse(text: str):
        v = _number(kind, text)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(text: str) -> float:
    v = _number(float, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def step_size(text: str):
    """``auto`` or a positive number."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive(float)(text)


def setting(text: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` (values as JSON where they parse, else text)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    vals = [json_value(x.strip()) for x in v.split(",")]
    if any(x == "" for x in vals):
        raise argparse.ArgumentTypeError(f"{k.strip()} has an empty value in {text!r}")
    return k.strip(), vals


def probe_arg(text: str) -> tuple[str | None, str, Any]:
    """``KEY=VALUE`` or ``PROBE.KEY=VALUE`` (the value as JSON where it parses)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected [PROBE.]KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    probe, _, key = k.strip().rpartition(".")
    if not key:
        raise argparse.ArgumentTypeError(f"expected [PROBE.]KEY=VALUE, got {text!r}")
    return (probe or None), key, json_value(v.strip())


def probe_specs(names: list[str], args: list[tuple[str | None, str, Any]]) -> list:
    """Probe names and ``--probe-arg`` values as probe specs (``name`` or ``(name, kwargs)``)."""
    kwargs: dict[str, dict] = {n: {} for n in names}
    for probe, key, value in args:
        if probe is None:
            if len(names) != 1:
                raise ValueError(
                    f"--probe-arg {key}=... names no probe; with {len(names)} probes write "
                    "PROBE.KEY=VALUE, e.g. --probe-arg dimensionality.hook=hook_pre"
                )
            probe = names[0]
        if probe not in kwargs:
            raise ValueError(
                f"--probe-arg {probe}.{key}: {probe!r} is not among the probes {names}"
            )
        kwargs[probe][key] = value
    return [(n, kwargs[n]) if kwargs[n] else n for n in names]
