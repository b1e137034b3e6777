"""A geonames-text model on place lists the project does not ship, beside the exact-name lookup.

    pip install airportsdata==20260905 countryinfo==1.0.1     # the outside lists (MIT)
    OMP_NUM_THREADS=1 python scripts/eval_place_lists.py [--model RUN] [--n 600] --out lists.json

Lists, each with its own coordinates (not the table's):

* ``airports``: ``airportsdata`` airports with an IATA code, queried by their city as
  "City, Subdivision, Country" and "City, Country" (truth: the airport, usually some km from
  the city centre);
* ``capitals``: ``countryinfo`` capitals as "Capital" and "Capital, Country" (truth: the capital's
  coordinates there);
* ``countries``: ``countryinfo`` country names (truth: inside the country, scored as the share of
  estimates whose nearest table place is in that country).

Each query also as typed in lower case, without accents, and with one typo in its first part.
Scores: the model's median error over all queries and over the queries the lookup answers,
the lookup's answered share and its median over what it answers (``scripts/lookup_baseline.py``).
The point estimate is ``predict``'s default (``Method.predict``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookup_baseline import _typo_query, accent_free  # noqa: E402


def _pick(keys: list[str], n: int, salt: str) -> list[str]:
    """A deterministic sample of ``n`` keys (by hash): the same rows on every run."""
    return sorted(keys, key=lambda k: hashlib.sha1(f"{salt}|{k}".encode()).hexdigest())[:n]


def _country_name(cc: str) -> str | None:
    from globeflow.answers import country_name

    name = country_name(cc)
    return None if name == cc else name


def airport_queries(n: int) -> dict[str, tuple[list[str], np.ndarray]]:
    import airportsdata

    rows = airportsdata.load("IATA")
    keys = [k for k, r in rows.items() if r["city"] and r["country"] and _country_name(r["country"])]
    keys = _pick(keys, n, "airports")
    full, short, truth = [], [], []
    for k in keys:
        r = rows[k]
        country = _country_name(r["country"])
        full.append(f"{r['city']}, {r['subd']}, {country}" if r["subd"] else f"{r['city']}, {country}")
        short.append(f"{r['city']}, {country}")
        truth.append((r["lat"], r["lon"]))
    t = np.array(truth, np.float64)
    return {"airports: City, Subdivision, Country": (full, t), "airports: City, Country": (short, t)}


def _countries() -> list[dict]:
    from countryinfo import all_countries

    out = []
    for c in all_countries():
        try:
            iso, name, capital, ll = (c.iso() or {}).get("alpha2"), c.name(), c.capital(), c.capital_latlng()
        except (KeyError, AttributeError, ValueError):  # entries without a capital
            continue
        if isinstance(capital, list):  # several capitals: the first listed
            capital = capital[0] if capital else None
        if iso and name and capital and ll and len(ll) == 2:
            out.append({"cc": iso, "name": name, "capital": capital, "ll": ll})
    return sorted(out, key=lambda r: r["cc"])


def capital_queries(n: int) -> tuple[dict[str, tuple[list[str], np.ndarray]], list[str], list[str]]:
    rows = _countries()
    rows = [rows[i] for i in sorted(range(len(rows)), key=lambda i: hashlib.sha1(rows[i]["cc"].encode()).hexdigest())[:n]]
    t = np.array([r["ll"] for r in rows], np.float64)
    lists = {
        "capitals: Capital": ([r["capital"] for r in rows], t),
        "capitals: Capital, Country": ([f"{r['capital']}, {r['name']}" for r in rows], t),
    }
    return lists, [r["name"] for r in rows], [r["cc"] for r in rows]


def _variants(queries: list[str]) -> dict[str, list[str]]:
    return {
        "as typed": queries,
        "lower case": [q.lower() for q in queries],
        "accent-free": [accent_free(q) for q in queries],
        "one typo": [_typo_query(q, 0) for q in queries],
    }


def _km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from globeflow.geometry.coords import great_circle_km

    return np.asarray(great_circle_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run directory (default: the shipped model)")
    ap.add_argument("--n", type=int, default=600, help="airports sampled (capitals: all, ~245)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from globeflow.data.population import default_lookup
    from globeflow.metrics.admin import load_gazetteer
    from globeflow.serve import Locator

    t0 = time.perf_counter()
    loc = Locator(args.model)
    lookup = default_lookup()
    gaz = load_gazetteer()
    lists = airport_queries(args.n)
    caps, names, codes = capital_queries(10_000)
    lists.update(caps)
    res: dict = {"model": args.model or "shipped", "lists": {}}
    for title, (queries, truth) in lists.items():
        res["lists"][title] = {}
        for variant, qs in _variants(queries).items():
            pred = loc.method.predict(loc.embed_texts(qs), seed=0)
            d = _km(pred, truth)
            lk, ok = lookup.lookup_many(qs)
            row = {"n": len(qs), "model_median_km": float(np.median(d)), "model_within_25km": float(np.mean(d <= 25)),
                   "lookup_answered": float(ok.mean())}  # fmt: skip
            if ok.any():
                row["lookup_median_km"] = float(np.median(_km(lk[ok], truth[ok])))
                row["model_median_km_where_lookup_answers"] = float(np.median(d[ok]))
            if (~ok).any():
                row["model_median_km_where_lookup_fails"] = float(np.median(d[~ok]))
            res["lists"][title][variant] = row
            print(title, variant, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    res["countries"] = {}
    for variant, qs in _variants(names).items():
        pred = loc.method.predict(loc.embed_texts(qs), seed=0)
        got = gaz.country[gaz.nearest(pred)]
        lk, ok = lookup.lookup_many(qs)
        lk_cc = np.where(ok, gaz.country[gaz.nearest(np.nan_to_num(lk))], "")
        row = {"n": len(qs), "model_right_country": float(np.mean(got == np.array(codes))),
               "lookup_answered": float(ok.mean()), "lookup_right_country": float(np.mean(lk_cc == np.array(codes)))}  # fmt: skip
        res["countries"][variant] = row
        print("countries", variant, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    res["seconds"] = time.perf_counter() - t0
    if args.out:
        from globeflow.io import save_json

        save_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
