"""The result of :func:`probes.memorised.find_memorised`: a per-point score per detector, ranks,
and, against planted ground truth, AUROC, precision@k and a ROC figure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memlens.io import jsonable
from memlens.probe import ProbeResult

__all__ = ["MemorisedResult", "auroc", "precision_at_k", "ranks"]


def _clean(score: Tensor) -> Tensor:
    """NaN (no measurement) ranks last."""
    s = score.double()
    return torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)


def ranks(score: Tensor) -> Tensor:
    """``[inst, T]`` 1-based rank of each point by ``score`` (1 = most likely memorised)."""
    order = _clean(score).argsort(dim=-1, descending=True, stable=True)
    r = torch.empty_like(order)
    r.scatter_(-1, order, torch.arange(1, order.shape[-1] + 1).expand_as(order))
    return r


def auroc(score: Tensor, truth: Tensor) -> Tensor:
    """``[inst]`` area under the ROC curve of ``score [inst, T]`` against bool ``truth [inst, T]``
    (the Mann-Whitney statistic; ties count one half; NaN where a class is empty)."""
    out = []
    for s, y in zip(_clean(score), truth.bool(), strict=True):
        pos, neg = s[y], s[~y]
        if not len(pos) or not len(neg):
            out.append(math.nan)
            continue
        gt = (pos[:, None] > neg[None, :]).double().mean()
        eq = (pos[:, None] == neg[None, :]).double().mean()
        out.append(float(gt + 0.5 * eq))
    return torch.tensor(out)


def precision_at_k(score: Tensor, truth: Tensor, k: int | None = None) -> Tensor:
    """``[inst]`` fraction of the top ``k`` points by ``score`` that are planted (``k`` defaults
    to the number planted in each instance)."""
    out = []
    for s, y in zip(_clean(score), truth.bool(), strict=True):
        kk = int(y.sum()) if k is None else int(k)
        if kk <= 0:
            out.append(math.nan)
            continue
        top = s.argsort(descending=True, stable=True)[:kk]
        out.append(float(y[top].double().mean()))
    return torch.tensor(out)


@dataclass
class MemorisedResult(ProbeResult):
    """Per-point memorisation scores ``scores[detector] [inst, T]`` (higher = more likely
    memorised). ``planted [inst, T]`` is the ground truth when the training set planted points.
    ``notes[detector]`` says what a detector reads; ``data_only`` lists detectors that read the
    data, not the model (D* at the input hook), left out of :meth:`best`."""

    scores: dict[str, Tensor]
    planted: Tensor | None = None
    notes: dict[str, str] = field(default_factory=dict)
    data_only: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def detectors(self) -> list[str]:
        return list(self.scores)

    def _truth(self, planted: Tensor | None) -> Tensor:
        t = self.planted if planted is None else planted
        if t is None:
            raise ValueError("no planted points: pass planted= [inst, T] (bool) or plant some")
        t = torch.as_tensor(t).bool()
        shape = next(iter(self.scores.values())).shape
        if t.shape != shape:
            if t.T.shape == shape:  # the Batch layout [T, inst]
                t = t.T
            else:
                raise ValueError(
                    f"planted must be [inst, T] = {tuple(shape)}, got {tuple(t.shape)}"
                )
        return t.cpu()

    def ranks(self) -> dict[str, Tensor]:
        return {d: ranks(s) for d, s in self.scores.items()}

    def auroc(self, planted: Tensor | None = None) -> dict[str, Tensor]:
        t = self._truth(planted)
        return {d: auroc(s, t) for d, s in self.scores.items()}

    def precision_at_k(self, planted: Tensor | None = None, k: int | None = None):
        t = self._truth(planted)
        return {d: precision_at_k(s, t, k) for d, s in self.scores.items()}

    def best(self, planted: Tensor | None = None) -> tuple[str, float]:
        """The model detector with the highest mean AUROC, and that AUROC."""
        au = {d: float(a.nanmean()) for d, a in self.auroc(planted).items()}
        au = {d: a for d, a in au.items() if d not in self.data_only and a == a}
        if not au:
            return "none", math.nan
        d = max(au, key=au.get)
        return d, au[d]

    def planted_ranks(self, detector: str, planted: Tensor | None = None) -> list[list[int]]:
        """Per instance, the ranks (1 = top) the detector gives the planted points."""
        t = self._truth(planted)
        r = ranks(self.scores[detector])
        return [sorted(r[i][t[i]].tolist()) for i in range(r.shape[0])]

    def scalars(self) -> dict[str, float]:
        if self.planted is None:
            return {}
        return {f"auroc_{d}": float(a.nanmean()) for d, a in self.auroc().items()}

    def table(self) -> list[dict]:
        t = self.planted is not None
        au = self.auroc() if t else {}
        pk = self.precision_at_k() if t else {}
        return [
            {
                "detector": d,
                "auroc": float(au[d].nanmean()) if t else None,
                "precision_at_k": float(pk[d].nanmean()) if t else None,
                "reads": self.notes.get(d, ""),
            }
            for d in self.scores
        ]

    def summary(self) -> str:
        inst, T = next(iter(self.scores.values())).shape
        lines = [f"memorisation detectors on {T} training points x {inst} instance(s)"]
        if self.planted is None:
            lines.append("no planted points: per-point ranks only (top 5 per detector, instance 0)")
            for d, r in self.ranks().items():
                top = r[0].argsort()[:5].tolist()
                lines.append(f"  {d:<24} top points {top}")
            return "\n".join(lines)
        n = int(self._truth(None).sum(1).float().mean())
        lines.append(f"{n} planted point(s) per instance; AUROC (0.5 = chance) and precision@{n}:")
        for row in self.table():
            tag = "  (reads the data, not the model)" if row["detector"] in self.data_only else ""
            lines.append(
                f"  {row['detector']:<24} AUROC {row['auroc']:.2f}   "
                f"precision@{n} {row['precision_at_k']:.2f}{tag}"
            )
        d, a = self.best()
        lines.append(
            f"best: {d} (AUROC {a:.2f}); planted ranks, instance 0: {self.planted_ranks(d)[0]}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = {"scores": jsonable(self.scores), "notes": self.notes, "data_only": self.data_only}
        out["ranks"] = jsonable(self.ranks())
        if self.planted is not None:
            out["planted"] = jsonable(self.planted)
            out["table"] = self.table()
            out["best"] = list(self.best())
        out["extra"] = jsonable(self.extra)
        return out

    def plot(self, ax=None, instance: int = 0):
        """ROC curves of every detector against the planted points (one instance)."""
        import matplotlib.pyplot as plt

        t = self._truth(None)[instance]
        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 5.2))
        au = self.auroc()
        order = sorted(self.scores, key=lambda d: -float(au[d][instance]))
        for d in order:
            s = _clean(self.scores[d][instance])
            idx = s.argsort(descending=True, stable=True)
            y = t[idx].double()
            tpr = torch.cat([torch.zeros(1), y.cumsum(0) / y.sum().clamp_min(1)])
            fpr = torch.cat([torch.zeros(1), (1 - y).cumsum(0) / (1 - y).sum().clamp_min(1)])
            style = ":" if d in self.data_only else "-"
            ax.plot(fpr, tpr, style, label=f"{d} ({float(au[d][instance]):.2f})", lw=1.4)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate (unplanted points)")
        ax.set_ylabel("true positive rate (planted points)")
        ax.set_title(f"which points are memorised? ({int(t.sum())} planted of {len(t)})")
        ax.legend(fontsize=7, loc="lower right", title="detector (AUROC)", title_fontsize=7)
        return ax
