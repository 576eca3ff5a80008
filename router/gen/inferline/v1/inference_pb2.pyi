from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FallbackLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_LEVEL_UNSPECIFIED: _ClassVar[FallbackLevel]
    FALLBACK_LEVEL_PRIMARY: _ClassVar[FallbackLevel]
    FALLBACK_LEVEL_LAST_KNOWN_GOOD: _ClassVar[FallbackLevel]
    FALLBACK_LEVEL_CACHED_SCORE: _ClassVar[FallbackLevel]
    FALLBACK_LEVEL_STATIC_DEFAULT: _ClassVar[FallbackLevel]

class FreshnessStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRESHNESS_STATUS_UNSPECIFIED: _ClassVar[FreshnessStatus]
    FRESHNESS_STATUS_FRESH: _ClassVar[FreshnessStatus]
    FRESHNESS_STATUS_STALE: _ClassVar[FreshnessStatus]
    FRESHNESS_STATUS_MISSING: _ClassVar[FreshnessStatus]
    FRESHNESS_STATUS_UNAVAILABLE: _ClassVar[FreshnessStatus]
FALLBACK_LEVEL_UNSPECIFIED: FallbackLevel
FALLBACK_LEVEL_PRIMARY: FallbackLevel
FALLBACK_LEVEL_LAST_KNOWN_GOOD: FallbackLevel
FALLBACK_LEVEL_CACHED_SCORE: FallbackLevel
FALLBACK_LEVEL_STATIC_DEFAULT: FallbackLevel
FRESHNESS_STATUS_UNSPECIFIED: FreshnessStatus
FRESHNESS_STATUS_FRESH: FreshnessStatus
FRESHNESS_STATUS_STALE: FreshnessStatus
FRESHNESS_STATUS_MISSING: FreshnessStatus
FRESHNESS_STATUS_UNAVAILABLE: FreshnessStatus

class Value(_message.Message):
    __slots__ = ("double_value", "int64_value", "string_value", "bool_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int64_value: int
    string_value: str
    bool_value: bool
    def __init__(self, double_value: _Optional[float] = ..., int64_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("candidate_id", "entities", "features")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    entities: _containers.MessageMap[str, Value]
    features: _containers.MessageMap[str, Value]
    def __init__(self, candidate_id: _Optional[str] = ..., entities: _Optional[_Mapping[str, Value]] = ..., features: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class PredictOptions(_message.Message):
    __slots__ = ("return_timings",)
    RETURN_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    return_timings: bool
    def __init__(self, return_timings: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("request_id", "idempotency_key", "alias", "version", "candidates", "options")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    idempotency_key: str
    alias: str
    version: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    options: PredictOptions
    def __init__(self, request_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class FeatureFreshness(_message.Message):
    __slots__ = ("feature_view", "status", "age_ms")
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    feature_view: str
    status: FreshnessStatus
    age_ms: int
    def __init__(self, feature_view: _Optional[str] = ..., status: _Optional[_Union[FreshnessStatus, str]] = ..., age_ms: _Optional[int] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("candidate_id", "score", "freshness")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    score: float
    freshness: _containers.RepeatedCompositeFieldContainer[FeatureFreshness]
    def __init__(self, candidate_id: _Optional[str] = ..., score: _Optional[float] = ..., freshness: _Optional[_Iterable[_Union[FeatureFreshness, _Mapping]]] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "version", "alias", "arm")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    arm: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "duration_us")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    stage: str
    duration_us: int
    def __init__(self, stage: _Optional[str] = ..., duration_us: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "trace_id", "model", "scores", "degraded", "fallback_level", "degraded_reasons", "timings")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    model: ServedModel
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    degraded: bool
    fallback_level: FallbackLevel
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., model: _Optional[_Union[ServedModel, _Mapping]] = ..., scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ..., degraded: _Optional[bool] = ..., fallback_level: _Optional[_Union[FallbackLevel, str]] = ..., degraded_reasons: _Optional[_Iterable[str]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ...) -> None: ...
