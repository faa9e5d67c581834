from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]

class OutputUnits(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_UNITS_UNSPECIFIED: _ClassVar[OutputUnits]
    OUTPUT_UNITS_PIXELS: _ClassVar[OutputUnits]
    OUTPUT_UNITS_PHYSICAL: _ClassVar[OutputUnits]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]
    PRECISION_INT8: _ClassVar[Precision]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_UINT8: DataType
OUTPUT_UNITS_UNSPECIFIED: OutputUnits
OUTPUT_UNITS_PIXELS: OutputUnits
OUTPUT_UNITS_PHYSICAL: OutputUnits
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_FP16: Precision
PRECISION_INT8: Precision

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class MaskOperator(_message.Message):
    __slots__ = ("mask",)
    MASK_FIELD_NUMBER: _ClassVar[int]
    mask: Tensor
    def __init__(self, mask: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DownsampleOperator(_message.Message):
    __slots__ = ("factor",)
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    factor: int
    def __init__(self, factor: _Optional[int] = ...) -> None: ...

class TruncateOperator(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class QuantizeAoaOperator(_message.Message):
    __slots__ = ("sectors", "building")
    SECTORS_FIELD_NUMBER: _ClassVar[int]
    BUILDING_FIELD_NUMBER: _ClassVar[int]
    sectors: int
    building: Tensor
    def __init__(self, sectors: _Optional[int] = ..., building: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PerChannelOperator(_message.Message):
    __slots__ = ("operators",)
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    operators: _containers.RepeatedCompositeFieldContainer[Operator]
    def __init__(self, operators: _Optional[_Iterable[_Union[Operator, _Mapping]]] = ...) -> None: ...

class ComposeOperator(_message.Message):
    __slots__ = ("operators",)
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    operators: _containers.RepeatedCompositeFieldContainer[Operator]
    def __init__(self, operators: _Optional[_Iterable[_Union[Operator, _Mapping]]] = ...) -> None: ...

class IdentityOperator(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamedOperator(_message.Message):
    __slots__ = ("name", "numbers", "maps", "operators")
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    numbers: _containers.ScalarMap[str, float]
    maps: _containers.MessageMap[str, Tensor]
    operators: _containers.RepeatedCompositeFieldContainer[Operator]
    def __init__(self, name: _Optional[str] = ..., numbers: _Optional[_Mapping[str, float]] = ..., maps: _Optional[_Mapping[str, Tensor]] = ..., operators: _Optional[_Iterable[_Union[Operator, _Mapping]]] = ...) -> None: ...

class Site(_message.Message):
    __slots__ = ("building", "base_station", "building_height")
    BUILDING_FIELD_NUMBER: _ClassVar[int]
    BASE_STATION_FIELD_NUMBER: _ClassVar[int]
    BUILDING_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    building: Tensor
    base_station: BaseStation
    building_height: Tensor
    def __init__(self, building: _Optional[_Union[Tensor, _Mapping]] = ..., base_station: _Optional[_Union[BaseStation, _Mapping]] = ..., building_height: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class BaseStation(_message.Message):
    __slots__ = ("row", "col", "height_m")
    ROW_FIELD_NUMBER: _ClassVar[int]
    COL_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_M_FIELD_NUMBER: _ClassVar[int]
    row: float
    col: float
    height_m: float
    def __init__(self, row: _Optional[float] = ..., col: _Optional[float] = ..., height_m: _Optional[float] = ...) -> None: ...

class Operator(_message.Message):
    __slots__ = ("mask", "downsample", "truncate", "quantize_aoa", "per_channel", "compose", "identity", "named")
    MASK_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_AOA_FIELD_NUMBER: _ClassVar[int]
    PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    COMPOSE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    mask: MaskOperator
    downsample: DownsampleOperator
    truncate: TruncateOperator
    quantize_aoa: QuantizeAoaOperator
    per_channel: PerChannelOperator
    compose: ComposeOperator
    identity: IdentityOperator
    named: NamedOperator
    def __init__(self, mask: _Optional[_Union[MaskOperator, _Mapping]] = ..., downsample: _Optional[_Union[DownsampleOperator, _Mapping]] = ..., truncate: _Optional[_Union[TruncateOperator, _Mapping]] = ..., quantize_aoa: _Optional[_Union[QuantizeAoaOperator, _Mapping]] = ..., per_channel: _Optional[_Union[PerChannelOperator, _Mapping]] = ..., compose: _Optional[_Union[ComposeOperator, _Mapping]] = ..., identity: _Optional[_Union[IdentityOperator, _Mapping]] = ..., named: _Optional[_Union[NamedOperator, _Mapping]] = ...) -> None: ...

class ConstructRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "observation", "operator", "noise_sigma", "zeta", "steps", "corrector_steps", "samples", "seed", "output_units", "precision", "jacobian_free", "adapter_name", "adapter_version", "sampler", "sampler_parameters", "site", "respacing")
    class SamplerParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    NOISE_SIGMA_FIELD_NUMBER: _ClassVar[int]
    ZETA_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CORRECTOR_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_FREE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    RESPACING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    observation: Tensor
    operator: Operator
    noise_sigma: float
    zeta: float
    steps: int
    corrector_steps: int
    samples: int
    seed: int
    output_units: OutputUnits
    precision: Precision
    jacobian_free: bool
    adapter_name: str
    adapter_version: str
    sampler: str
    sampler_parameters: _containers.ScalarMap[str, float]
    site: Site
    respacing: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., observation: _Optional[_Union[Tensor, _Mapping]] = ..., operator: _Optional[_Union[Operator, _Mapping]] = ..., noise_sigma: _Optional[float] = ..., zeta: _Optional[float] = ..., steps: _Optional[int] = ..., corrector_steps: _Optional[int] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ..., output_units: _Optional[_Union[OutputUnits, str]] = ..., precision: _Optional[_Union[Precision, str]] = ..., jacobian_free: _Optional[bool] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[str] = ..., sampler: _Optional[str] = ..., sampler_parameters: _Optional[_Mapping[str, float]] = ..., site: _Optional[_Union[Site, _Mapping]] = ..., respacing: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_seconds", "sampling_seconds", "total_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    sampling_seconds: float
    total_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., sampling_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class ConstructResponse(_message.Message):
    __slots__ = ("map", "std", "residual_norm", "model_name", "model_version", "steps", "timings", "adapter_name", "adapter_version", "sampler", "sampler_parameters", "samples", "deterministic", "site_conditioned", "calibrated", "interval_low", "interval_high", "interval_coverage")
    class SamplerParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MAP_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_NORM_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    SITE_CONDITIONED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_LOW_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_HIGH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    map: Tensor
    std: Tensor
    residual_norm: float
    model_name: str
    model_version: str
    steps: int
    timings: Timings
    adapter_name: str
    adapter_version: str
    sampler: str
    sampler_parameters: _containers.ScalarMap[str, float]
    samples: int
    deterministic: bool
    site_conditioned: bool
    calibrated: bool
    interval_low: Tensor
    interval_high: Tensor
    interval_coverage: float
    def __init__(self, map: _Optional[_Union[Tensor, _Mapping]] = ..., std: _Optional[_Union[Tensor, _Mapping]] = ..., residual_norm: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., steps: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[str] = ..., sampler: _Optional[str] = ..., sampler_parameters: _Optional[_Mapping[str, float]] = ..., samples: _Optional[int] = ..., deterministic: _Optional[bool] = ..., site_conditioned: _Optional[bool] = ..., calibrated: _Optional[bool] = ..., interval_low: _Optional[_Union[Tensor, _Mapping]] = ..., interval_high: _Optional[_Union[Tensor, _Mapping]] = ..., interval_coverage: _Optional[float] = ...) -> None: ...

class ConstructStreamRequest(_message.Message):
    __slots__ = ("request", "progress_interval")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    request: ConstructRequest
    progress_interval: int
    def __init__(self, request: _Optional[_Union[ConstructRequest, _Mapping]] = ..., progress_interval: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "residual_norm")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_NORM_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    residual_norm: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., residual_norm: _Optional[float] = ...) -> None: ...

class ConstructStreamResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: ConstructResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[ConstructResponse, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "ready", "adapts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ADAPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    ready: bool
    adapts: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., ready: _Optional[bool] = ..., adapts: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class TaskAccuracy(_message.Message):
    __slots__ = ("precision", "task", "gain_rmse_db", "aoa_sine_rmse")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    GAIN_RMSE_DB_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_RMSE_FIELD_NUMBER: _ClassVar[int]
    precision: str
    task: str
    gain_rmse_db: float
    aoa_sine_rmse: float
    def __init__(self, precision: _Optional[str] = ..., task: _Optional[str] = ..., gain_rmse_db: _Optional[float] = ..., aoa_sine_rmse: _Optional[float] = ...) -> None: ...

class SamplerParameter(_message.Message):
    __slots__ = ("name", "type", "default_value", "min", "max", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_value: float
    min: float
    max: float
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_value: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class SamplerInfo(_message.Message):
    __slots__ = ("name", "description", "default_steps", "parameters", "uses_network_vjp")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USES_NETWORK_VJP_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    default_steps: int
    parameters: _containers.RepeatedCompositeFieldContainer[SamplerParameter]
    uses_network_vjp: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., default_steps: _Optional[int] = ..., parameters: _Optional[_Iterable[_Union[SamplerParameter, _Mapping]]] = ..., uses_network_vjp: _Optional[bool] = ...) -> None: ...

class SamplerRecommendation(_message.Message):
    __slots__ = ("operator_kind", "sampler", "steps", "samples", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OPERATOR_KIND_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    operator_kind: str
    sampler: str
    steps: int
    samples: int
    parameters: _containers.ScalarMap[str, float]
    def __init__(self, operator_kind: _Optional[str] = ..., sampler: _Optional[str] = ..., steps: _Optional[int] = ..., samples: _Optional[int] = ..., parameters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetModelMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "channels", "tile_size", "operators", "precisions", "schedule_json", "max_steps", "accuracy", "adapts", "samplers", "recommended", "max_samples", "max_evaluations", "max_operators", "deterministic", "site_aware", "calibrated", "interval_coverage", "calibrated_kinds", "calibrated_constructions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ADAPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_OPERATORS_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    SITE_AWARE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_KINDS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_CONSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    tile_size: int
    operators: _containers.RepeatedScalarFieldContainer[str]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    schedule_json: str
    max_steps: int
    accuracy: _containers.RepeatedCompositeFieldContainer[TaskAccuracy]
    adapts: str
    samplers: _containers.RepeatedCompositeFieldContainer[SamplerInfo]
    recommended: _containers.RepeatedCompositeFieldContainer[SamplerRecommendation]
    max_samples: int
    max_evaluations: int
    max_operators: int
    deterministic: bool
    site_aware: bool
    calibrated: bool
    interval_coverage: float
    calibrated_kinds: _containers.RepeatedScalarFieldContainer[str]
    calibrated_constructions: _containers.RepeatedCompositeFieldContainer[SamplerRecommendation]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., tile_size: _Optional[int] = ..., operators: _Optional[_Iterable[str]] = ..., precisions: _Optional[_Iterable[str]] = ..., schedule_json: _Optional[str] = ..., max_steps: _Optional[int] = ..., accuracy: _Optional[_Iterable[_Union[TaskAccuracy, _Mapping]]] = ..., adapts: _Optional[str] = ..., samplers: _Optional[_Iterable[_Union[SamplerInfo, _Mapping]]] = ..., recommended: _Optional[_Iterable[_Union[SamplerRecommendation, _Mapping]]] = ..., max_samples: _Optional[int] = ..., max_evaluations: _Optional[int] = ..., max_operators: _Optional[int] = ..., deterministic: _Optional[bool] = ..., site_aware: _Optional[bool] = ..., calibrated: _Optional[bool] = ..., interval_coverage: _Optional[float] = ..., calibrated_kinds: _Optional[_Iterable[str]] = ..., calibrated_constructions: _Optional[_Iterable[_Union[SamplerRecommendation, _Mapping]]] = ...) -> None: ...
