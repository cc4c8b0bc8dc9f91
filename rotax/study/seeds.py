"""Several SFT seeds (data orders) in one study: each seed's view of the stage outputs, the
headline table as means over seeds, and the claims merged over seeds.

Interval of a mean over k seeds: each seed gives an estimate with its own 95% interval (within-
seed noise: hands). The interval of the mean is ``mean ± max(t_{k−1} · s / √k, √(mean h²) / √k)``
per side, where ``s`` is the sample standard deviation of the seed estimates (seed-to-seed
spread, which already contains the hand noise) and ``h`` the seeds' own half-widths on that
side (so a lucky agreement of 3 seeds never gives an interval narrower than the hands allow).
An unbounded side stays unbounded.
"""

from __future__ import annotations

import copy
import math

import numpy as np

# two-sided 95% Student t quantiles by degrees of freedom (1..10), then the normal value
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def _float(x) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):  # JSON-safe infinities ("inf", "-inf")
        return float(x)
    return float(x)


def mean_over_seeds(estimates, intervals) -> tuple[float, list[float]]:
    """``(mean, [low, high])`` over the seeds whose estimate is defined (see the module doc);
    ``(nan, [nan, nan])`` when none is."""
    pairs = [(_float(e), [_float(x) for x in iv]) for e, iv in zip(estimates, intervals)
             if not math.isnan(_float(e))]
    if not pairs:
        return math.nan, [math.nan, math.nan]
    if len(pairs) == 1:
        return pairs[0][0], pairs[0][1]
    k = len(pairs)
    values = np.array([p[0] for p in pairs])
    mean = float(values.mean())
    spread = t_quantile(k - 1) * float(values.std(ddof=1)) / math.sqrt(k)
    sides = []
    for side in (0, 1):
        half = np.array([abs(p[0] - p[1][side]) for p in pairs])
        if np.isnan(half).any():
            sides.append(math.nan)
            continue
        within = math.sqrt(float(np.mean(half ** 2)) / k) if np.isfinite(half).all() else math.inf
        sides.append(max(spread, within))
    return mean, [mean - sides[0], mean + sides[1]]


def seed_views(outputs: dict) -> list[tuple[int, dict]]:
    """``[(sft_seed, outputs as if the study had only that SFT seed)]``: its SFT entry, its PPO
    runs, its reset rows; the auto-select and the spectra belong to seed 0."""
    seeds = outputs["sft"].get("seeds") or [outputs["sft"]]
    views = []
    for sft in seeds:
        i = sft.get("sft_seed", 0)
        view = dict(outputs)
        view["sft"] = sft
        if "ppo" in outputs:
            view["ppo"] = {**outputs["ppo"], **{key: [r for r in outputs["ppo"].get(key, [])
                                                      if r.get("sft_seed", 0) == i] for key in ("runs", "controls")}}
        if "resets" in outputs:
            view["resets"] = {**outputs["resets"], "rows": [r for r in outputs["resets"].get("rows", [])
                                                            if r.get("sft_seed", 0) == i]}
        if i:
            view.pop("autoselect", None)
            view.pop("analysis", None)
        views.append((i, view))
    return views


def _cell_mean(cells: list[dict]) -> dict:
    mean, interval = mean_over_seeds([c["mean"] for c in cells], [c["ci"] for c in cells])
    out = {"mean": mean, "ci": interval}
    faces = [c.get("face_as_id") for c in cells]
    if any(f is not None for f in faces):
        out["face_as_id"] = float(np.mean([f for f in faces if f is not None]))
    return out


def headline_table(tables: list[tuple[int, list[dict]]]) -> list[dict]:
    """Rows of the seeds' tables with the same name averaged (in seed 0's order); a row only
    one seed has is kept and says so."""
    if len(tables) == 1:
        return tables[0][1]
    by_name = [{r["name"]: r for r in rows} for _, rows in tables]
    out = []
    for row in tables[0][1]:
        rows = [t[row["name"]] for t in by_name if row["name"] in t]
        if row["kind"] == "base":  # one base for every SFT seed
            out.append(row)
            continue
        if len(rows) == 1:
            out.append({**row, "detail": f"{row['detail']} (SFT seed {tables[0][0]} only)".strip()})
            continue
        recovered = [r.get("recovered") for r in rows]
        seconds = [r.get("seconds") for r in rows if r.get("seconds") is not None]
        details = list(dict.fromkeys(r.get("detail", "") for r in rows))
        out.append({"name": row["name"], "kind": row["kind"],
                    "id": _cell_mean([r["id"] for r in rows]), "ood": _cell_mean([r["ood"] for r in rows]),
                    "recovered": None if any(x is None for x in recovered) else float(np.mean(recovered)),
                    "seconds": float(np.mean(seconds)) if seconds else None,
                    "detail": f"mean of {len(rows)} SFT seeds" + (f"; {' / '.join(details)}" if any(details) else ""),
                    "sft_seeds": len(rows)})
    return out


def merge_claims(per_seed: list[tuple[int, list[dict]]]) -> list[dict]:
    """One claim per id: the estimate and interval are the mean over seeds (module doc), the
    verdict the seeds' common verdict, or *mixed* with the disagreement named."""
    if len(per_seed) == 1:
        seed, claims = per_seed[0]
        return [{**c, "per_seed": [_seed_entry(seed, c)]} for c in claims]
    order, by_id = [], {}
    for seed, claims in per_seed:
        for c in claims:
            if c["id"] not in by_id:
                order.append(c["id"])
                by_id[c["id"]] = []
            by_id[c["id"]].append((seed, c))
    out = []
    for id_ in order:
        entries = by_id[id_]
        first = entries[0][1]
        merged = copy.deepcopy(first)
        merged["per_seed"] = [_seed_entry(s, c) for s, c in entries]
        if len(entries) > 1 and first["verdict"] != "reported":
            estimate, interval = mean_over_seeds([c["estimate"] for _, c in entries],
                                                 [c["interval"] for _, c in entries])
            verdicts = [c["verdict"] for _, c in entries]
            agree = len(set(verdicts)) == 1
            merged.update(estimate=_json(estimate), interval=[_json(x) for x in interval],
                          verdict=verdicts[0] if agree else "mixed")
            listing = "; ".join(f"seed {s}: {c['verdict']}, {_fmt(c['estimate'])} "
                                f"[{_fmt(c['interval'][0])}, {_fmt(c['interval'][1])}]" for s, c in entries)
            merged["evidence"] = (f"Mean over {len(entries)} SFT seeds {_fmt(estimate)} [{_fmt(interval[0])}, "
                                  f"{_fmt(interval[1])}] ({first['unit']}; the interval includes the seed-to-seed "
                                  f"spread). Per SFT seed: {listing}. "
                                  + ("The verdict is the same for every SFT seed. " if agree else
                                     "The SFT seeds disagree, so the verdict is mixed. ")
                                  + f"SFT seed {entries[0][0]}: {first['evidence']}")
        elif len(entries) == 1:
            merged["evidence"] = f"{first['evidence']} (SFT seed {entries[0][0]} only)"
        out.append(merged)
    return out


def _seed_entry(seed: int, claim: dict) -> dict:
    return {"sft_seed": seed, "verdict": claim["verdict"], "estimate": claim["estimate"],
            "interval": claim["interval"]}


def _json(x: float):
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _fmt(x) -> str:
    x = _float(x)
    if math.isnan(x):
        return "—"
    return f"{x:+.3f}" if math.isfinite(x) else ("+inf" if x > 0 else "−inf")
