"""Feast objects for the demo: three entities and one feature view each.

Self-contained (imports only Feast) because the ``feast`` CLI imports every
module of the repo by file path; the builder imports the same objects and
applies them programmatically. Sources are relative paths, which Feast
resolves against the repo directory, so one definition serves both the
committed repo and the builder's copy under ``<out>/feast``.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64

TIMESTAMP_FIELD = "event_timestamp"

ACCOUNT_FEATURES: tuple[str, ...] = (
    "txn_count_1h",
    "txn_count_24h",
    "txn_count_7d",
    "txn_amount_sum_1h",
    "txn_amount_sum_24h",
    "avg_amount_7d",
    "avg_amount_30d",
    "max_amount_7d",
    "std_amount_30d",
    "distinct_merchants_24h",
    "distinct_merchants_7d",
    "distinct_countries_30d",
    "distinct_devices_30d",
    "distinct_ips_7d",
    "failed_txn_count_24h",
    "declined_rate_7d",
    "chargeback_rate_90d",
    "refund_rate_90d",
    "account_age_days",
    "days_since_last_txn",
    "days_since_password_change",
    "login_count_24h",
    "failed_login_count_24h",
    "international_txn_ratio_30d",
    "night_txn_ratio_30d",
    "card_not_present_ratio_30d",
    "new_merchant_ratio_7d",
    "velocity_score_1h",
    "credit_utilization",
    "prior_risk_score",
)

USER_FEATURES: tuple[str, ...] = (
    "user_tenure_days",
    "user_sessions_7d",
    "user_avg_session_min_7d",
    "user_clicks_7d",
    "user_ctr_30d",
    "user_purchases_30d",
    "user_avg_order_value_90d",
    "user_days_since_last_visit",
    "user_category_diversity_30d",
    "user_dwell_p50_s",
    "user_is_premium",
    "user_notif_opt_in",
)

ITEM_FEATURES: tuple[str, ...] = (
    "item_age_days",
    "item_price",
    "item_discount_pct",
    "item_impressions_7d",
    "item_clicks_7d",
    "item_ctr_7d",
    "item_ctr_30d",
    "item_purchases_30d",
    "item_rating_avg",
    "item_rating_count",
    "item_return_rate_90d",
    "item_stock_level",
)

account = Entity(
    name="account",
    join_keys=["account_id"],
    value_type=ValueType.INT64,
    description="Payment account scored by the fraud model.",
)
user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="Viewer whose feed the ranker orders.",
)
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="Catalogue item ranked for a user.",
)


def _view(
    name: str, entity: Entity, join_key: str, features: tuple[str, ...], ttl: timedelta
) -> FeatureView:
    source = FileSource(
        name=f"{name}_source",
        path=f"data/{name}.parquet",
        timestamp_field=TIMESTAMP_FIELD,
    )
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=ttl,
        # The join key is listed explicitly so Feast never has to infer the
        # schema from the parquet file (absent in the committed repo).
        schema=[
            Field(name=join_key, dtype=Int64),
            *(Field(name=f, dtype=Float32) for f in features),
        ],
        source=source,
        online=True,
    )


account_features = _view(
    "account_features", account, "account_id", ACCOUNT_FEATURES, timedelta(days=1)
)
user_features = _view("user_features", user, "user_id", USER_FEATURES, timedelta(days=7))
item_features = _view("item_features", item, "item_id", ITEM_FEATURES, timedelta(days=1))

ENTITIES: tuple[Entity, ...] = (account, user, item)
FEATURE_VIEWS: tuple[FeatureView, ...] = (account_features, user_features, item_features)
