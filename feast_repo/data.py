"""Deterministic offline data for the demo feature views.

Feature values depend only on the seed (never on the clock), so models trained
from these tables are byte-identical across builds; only event timestamps move
with build time. Each view gets its own RNG stream, and values come from
distinct, loosely correlated distributions (counts, heavy-tailed amounts,
rates, flags) driven by a hidden per-entity factor, so the models have real
signal to learn and the features look like production data in dashboards.

Freshness contract (the router's TTL handling is tested against it):
- every id in ``1..n_entities`` has one row; ids outside that range are missing;
- ``id % 50 == 7`` rows are STALE: event time ``now - 1.5 * ttl``;
- all other rows are fresh: event time ``now - uniform(0, ttl / 2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feast_repo.definitions import (
    ACCOUNT_FEATURES,
    ITEM_FEATURES,
    TIMESTAMP_FIELD,
    USER_FEATURES,
)

DEFAULT_SEED = 20261128
STALE_MODULUS = 50
STALE_REMAINDER = 7
STALE_TTL_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class ViewSpec:
    name: str
    join_key: str
    n_entities: int
    ttl: timedelta
    features: tuple[str, ...]


def _sig(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


Columns = dict[str, np.ndarray]


def _account_columns(rng: np.random.Generator, n: int) -> Columns:
    risk = rng.normal(0.0, 1.0, n)  # hidden fraud propensity
    act = rng.normal(0.0, 1.0, n)  # hidden activity level
    s = _sig(risk - 1.0)
    lam24 = 3.0 * np.exp(0.45 * act) * (1.0 + 0.4 * np.maximum(risk, 0.0))
    c24 = rng.poisson(lam24)
    c1 = rng.binomial(c24, 0.07 + 0.08 * s)
    c7d = c24 + rng.poisson(6.0 * lam24)
    avg30 = rng.lognormal(3.8 + 0.3 * act, 0.6)
    avg7 = avg30 * rng.lognormal(0.0, 0.25, n)
    m24 = np.minimum(c24, 1 + rng.poisson(0.6 * lam24))
    c: Columns = {
        "txn_count_1h": c1,
        "txn_count_24h": c24,
        "txn_count_7d": c7d,
        "txn_amount_sum_1h": c1 * avg7 * rng.lognormal(0.0, 0.3, n),
        "txn_amount_sum_24h": c24 * avg7 * rng.lognormal(0.0, 0.2, n),
        "avg_amount_7d": avg7,
        "avg_amount_30d": avg30,
        "max_amount_7d": avg7 * (1.0 + rng.gamma(2.0, 0.8, n)),
        "std_amount_30d": avg30 * rng.gamma(4.0, 0.12, n),
        "distinct_merchants_24h": m24,
        "distinct_merchants_7d": m24 + rng.poisson(2.5 * lam24),
        "distinct_countries_30d": 1 + rng.poisson(0.2 + 0.8 * s),
        "distinct_devices_30d": 1 + rng.poisson(0.4 + 1.2 * s),
        "distinct_ips_7d": 1 + rng.poisson(1.5 + 2.0 * s),
        "failed_txn_count_24h": rng.poisson(0.15 + 2.5 * s**2),
        "declined_rate_7d": rng.beta(1.0 + 3.0 * s, 30.0),
        "chargeback_rate_90d": rng.beta(0.4 + 2.0 * s, 150.0),
        "refund_rate_90d": rng.beta(1.2, 40.0, n),
        "account_age_days": np.clip(rng.gamma(2.0, 300.0, n) * np.exp(-0.35 * risk), 1, 5000),
        "days_since_last_txn": rng.exponential(2.0, n),
        "days_since_password_change": rng.exponential(90.0, n),
        "login_count_24h": rng.poisson(2.0 * np.exp(0.3 * act)),
        "failed_login_count_24h": rng.poisson(0.05 + 3.0 * s**3),
        "international_txn_ratio_30d": rng.beta(0.6 + 1.5 * s, 8.0),
        "night_txn_ratio_30d": rng.beta(2.0, 10.0 - 5.0 * s),
        "card_not_present_ratio_30d": rng.beta(2.0 + 3.0 * s, 4.0),
        "new_merchant_ratio_7d": rng.beta(1.5 + 2.0 * s, 6.0),
        "velocity_score_1h": c1 / (1.0 + c24 / 24.0),
        "credit_utilization": rng.beta(2.0, 3.0, n),
        "prior_risk_score": _sig(risk - 1.5 + rng.normal(0.0, 0.7, n)),
    }
    return c


def _user_columns(rng: np.random.Generator, n: int) -> Columns:
    eng = rng.lognormal(0.0, 0.6, n)  # hidden engagement
    sessions = rng.poisson(4.0 * eng)
    return {
        "user_tenure_days": rng.gamma(1.5, 400.0, n),
        "user_sessions_7d": sessions,
        "user_avg_session_min_7d": rng.lognormal(1.8, 0.5, n),
        "user_clicks_7d": rng.poisson(3.0 * sessions * eng),
        "user_ctr_30d": rng.beta(2.0 + 2.0 * eng, 45.0),
        "user_purchases_30d": rng.poisson(0.6 * eng),
        "user_avg_order_value_90d": rng.lognormal(3.5, 0.5, n),
        "user_days_since_last_visit": rng.exponential(3.0 / eng),
        "user_category_diversity_30d": 1 + rng.poisson(3.0 * eng),
        "user_dwell_p50_s": rng.gamma(3.0, 8.0, n),
        "user_is_premium": rng.random(n) < 0.15,
        "user_notif_opt_in": rng.random(n) < 0.6,
    }


def _item_columns(rng: np.random.Generator, n: int) -> Columns:
    q = rng.normal(0.0, 1.0, n)  # hidden item quality
    impressions = rng.poisson(rng.lognormal(6.0, 1.0, n))
    ctr7 = rng.beta(2.0 + 3.0 * _sig(q), 60.0)
    return {
        "item_age_days": rng.exponential(120.0, n),
        "item_price": rng.lognormal(3.2, 0.9, n),
        "item_discount_pct": np.where(rng.random(n) < 0.6, 0.0, rng.uniform(5.0, 50.0, n)),
        "item_impressions_7d": impressions,
        "item_clicks_7d": rng.binomial(impressions, ctr7),
        "item_ctr_7d": ctr7,
        "item_ctr_30d": ctr7 * rng.lognormal(0.0, 0.15, n),
        "item_purchases_30d": rng.poisson(0.02 * impressions * _sig(q)),
        "item_rating_avg": np.clip(3.6 + 0.5 * q + rng.normal(0.0, 0.3, n), 1.0, 5.0),
        "item_rating_count": rng.poisson(rng.lognormal(3.0, 1.0, n)),
        "item_return_rate_90d": rng.beta(2.0, np.clip(25.0 + 5.0 * q, 5.0, None)),
        "item_stock_level": rng.poisson(rng.gamma(2.0, 25.0, n)),
    }


_GENERATORS: dict[str, Callable[[np.random.Generator, int], Columns]] = {
    "account_features": _account_columns,
    "user_features": _user_columns,
    "item_features": _item_columns,
}

VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec("account_features", "account_id", 5000, timedelta(days=1), ACCOUNT_FEATURES),
    ViewSpec("user_features", "user_id", 2000, timedelta(days=7), USER_FEATURES),
    ViewSpec("item_features", "item_id", 1000, timedelta(days=1), ITEM_FEATURES),
)
VIEWS_BY_NAME: dict[str, ViewSpec] = {v.name: v for v in VIEWS}


def _rng(seed: int, view: str, stream: int) -> np.random.Generator:
    index = [v.name for v in VIEWS].index(view)
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def feature_values(spec: ViewSpec, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Join key (int64, ids 1..n) and features (float32), independent of the clock."""
    cols = _GENERATORS[spec.name](_rng(seed, spec.name, 0), spec.n_entities)
    if tuple(cols) != spec.features:
        raise AssertionError(f"{spec.name}: generator columns differ from the view schema")
    frame = {spec.join_key: np.arange(1, spec.n_entities + 1, dtype=np.int64)}
    frame.update({k: np.asarray(v, dtype=np.float32) for k, v in cols.items()})
    return pd.DataFrame(frame)


def is_stale_id(entity_id: int | np.ndarray) -> np.ndarray:
    """Ids planted with a stale row (a 0-d array for a scalar id)."""
    return np.asarray(np.asarray(entity_id) % STALE_MODULUS == STALE_REMAINDER)


def event_times(spec: ViewSpec, now: datetime, seed: int = DEFAULT_SEED) -> pd.Series:
    """Event timestamps (UTC) for ids 1..n following the freshness contract."""
    ids = np.arange(1, spec.n_entities + 1)
    ttl_us = int(spec.ttl.total_seconds() * 1_000_000)
    age_us = _rng(seed, spec.name, 1).uniform(0.0, ttl_us / 2, spec.n_entities).astype(np.int64)
    age_us = np.where(is_stale_id(ids), int(STALE_TTL_FACTOR * ttl_us), age_us)
    now_ts = pd.Timestamp(now).tz_convert("UTC").floor("us")
    return pd.Series(now_ts - pd.to_timedelta(age_us, unit="us"), name=TIMESTAMP_FIELD)


def generate_tables(now: datetime, seed: int = DEFAULT_SEED) -> dict[str, pd.DataFrame]:
    """One offline table per view: join key, features, event timestamp."""
    tables = {}
    for spec in VIEWS:
        df = feature_values(spec, seed)
        df[TIMESTAMP_FIELD] = event_times(spec, now, seed).to_numpy()
        tables[spec.name] = df
    return tables


def write_tables(tables: dict[str, pd.DataFrame], data_dir: Path) -> dict[str, Path]:
    """Write ``data/<view>.parquet`` (the FileSource paths in definitions.py)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in tables.items():
        path = data_dir / f"{name}.parquet"
        df.to_parquet(path, index=False, engine="pyarrow")
        paths[name] = path
    return paths
