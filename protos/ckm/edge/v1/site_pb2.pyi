from ckm_edge.protos.ckm.edge.v1 import edge_pb2 as _edge_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TileGeometry(_message.Message):
    __slots__ = ("origin_x_m", "origin_y_m", "cell_size_m", "orientation_deg")
    ORIGIN_X_M_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_Y_M_FIELD_NUMBER: _ClassVar[int]
    CELL_SIZE_M_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_DEG_FIELD_NUMBER: _ClassVar[int]
    origin_x_m: float
    origin_y_m: float
    cell_size_m: float
    orientation_deg: float
    def __init__(self, origin_x_m: _Optional[float] = ..., origin_y_m: _Optional[float] = ..., cell_size_m: _Optional[float] = ..., orientation_deg: _Optional[float] = ...) -> None: ...

class SitePolicy(_message.Message):
    __slots__ = ("rebuild_after_measurements", "rebuild_after_seconds")
    REBUILD_AFTER_MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    REBUILD_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    rebuild_after_measurements: int
    rebuild_after_seconds: float
    def __init__(self, rebuild_after_measurements: _Optional[int] = ..., rebuild_after_seconds: _Optional[float] = ...) -> None: ...

class SiteDefinition(_message.Message):
    __slots__ = ("site_id", "site", "geometry", "model_name", "model_version", "adapter_name", "adapter_version", "default_gain_noise_db", "default_aoa_noise", "policy")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GAIN_NOISE_DB_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_AOA_NOISE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    site: _edge_pb2.Site
    geometry: TileGeometry
    model_name: str
    model_version: str
    adapter_name: str
    adapter_version: str
    default_gain_noise_db: float
    default_aoa_noise: float
    policy: SitePolicy
    def __init__(self, site_id: _Optional[str] = ..., site: _Optional[_Union[_edge_pb2.Site, _Mapping]] = ..., geometry: _Optional[_Union[TileGeometry, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[str] = ..., default_gain_noise_db: _Optional[float] = ..., default_aoa_noise: _Optional[float] = ..., policy: _Optional[_Union[SitePolicy, _Mapping]] = ...) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("definition", "measurement_count", "map_version", "map_measurement_count", "stale", "created_unix_ms")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAP_MEASUREMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    definition: SiteDefinition
    measurement_count: int
    map_version: int
    map_measurement_count: int
    stale: bool
    created_unix_ms: int
    def __init__(self, definition: _Optional[_Union[SiteDefinition, _Mapping]] = ..., measurement_count: _Optional[int] = ..., map_version: _Optional[int] = ..., map_measurement_count: _Optional[int] = ..., stale: _Optional[bool] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class CreateSiteRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: SiteDefinition
    def __init__(self, definition: _Optional[_Union[SiteDefinition, _Mapping]] = ...) -> None: ...

class CreateSiteResponse(_message.Message):
    __slots__ = ("site", "created")
    SITE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    site: SiteInfo
    created: bool
    def __init__(self, site: _Optional[_Union[SiteInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetSiteRequest(_message.Message):
    __slots__ = ("site_id",)
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    def __init__(self, site_id: _Optional[str] = ...) -> None: ...

class GetSiteResponse(_message.Message):
    __slots__ = ("site",)
    SITE_FIELD_NUMBER: _ClassVar[int]
    site: SiteInfo
    def __init__(self, site: _Optional[_Union[SiteInfo, _Mapping]] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites", "next_page_token")
    SITES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    next_page_token: str
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSiteRequest(_message.Message):
    __slots__ = ("site_id",)
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    def __init__(self, site_id: _Optional[str] = ...) -> None: ...

class DeleteSiteResponse(_message.Message):
    __slots__ = ("measurements_deleted", "maps_deleted")
    MEASUREMENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    MAPS_DELETED_FIELD_NUMBER: _ClassVar[int]
    measurements_deleted: int
    maps_deleted: int
    def __init__(self, measurements_deleted: _Optional[int] = ..., maps_deleted: _Optional[int] = ...) -> None: ...

class WorldPosition(_message.Message):
    __slots__ = ("x_m", "y_m")
    X_M_FIELD_NUMBER: _ClassVar[int]
    Y_M_FIELD_NUMBER: _ClassVar[int]
    x_m: float
    y_m: float
    def __init__(self, x_m: _Optional[float] = ..., y_m: _Optional[float] = ...) -> None: ...

class CellPosition(_message.Message):
    __slots__ = ("row", "col")
    ROW_FIELD_NUMBER: _ClassVar[int]
    COL_FIELD_NUMBER: _ClassVar[int]
    row: float
    col: float
    def __init__(self, row: _Optional[float] = ..., col: _Optional[float] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("world", "cell")
    WORLD_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    world: WorldPosition
    cell: CellPosition
    def __init__(self, world: _Optional[_Union[WorldPosition, _Mapping]] = ..., cell: _Optional[_Union[CellPosition, _Mapping]] = ...) -> None: ...

class Measurement(_message.Message):
    __slots__ = ("position", "gain_db", "aoa_sine", "gain_noise_db", "aoa_noise", "timestamp_unix_ms")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_FIELD_NUMBER: _ClassVar[int]
    GAIN_NOISE_DB_FIELD_NUMBER: _ClassVar[int]
    AOA_NOISE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    position: Position
    gain_db: float
    aoa_sine: float
    gain_noise_db: float
    aoa_noise: float
    timestamp_unix_ms: int
    def __init__(self, position: _Optional[_Union[Position, _Mapping]] = ..., gain_db: _Optional[float] = ..., aoa_sine: _Optional[float] = ..., gain_noise_db: _Optional[float] = ..., aoa_noise: _Optional[float] = ..., timestamp_unix_ms: _Optional[int] = ...) -> None: ...

class AddMeasurementsRequest(_message.Message):
    __slots__ = ("site_id", "measurements", "batch_id")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    measurements: _containers.RepeatedCompositeFieldContainer[Measurement]
    batch_id: str
    def __init__(self, site_id: _Optional[str] = ..., measurements: _Optional[_Iterable[_Union[Measurement, _Mapping]]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class AddMeasurementsResponse(_message.Message):
    __slots__ = ("accepted", "measurement_count", "map_version", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    measurement_count: int
    map_version: int
    duplicate: bool
    def __init__(self, accepted: _Optional[int] = ..., measurement_count: _Optional[int] = ..., map_version: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetMapRequest(_message.Message):
    __slots__ = ("site_id", "version", "output_units")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    version: int
    output_units: _edge_pb2.OutputUnits
    def __init__(self, site_id: _Optional[str] = ..., version: _Optional[int] = ..., output_units: _Optional[_Union[_edge_pb2.OutputUnits, str]] = ...) -> None: ...

class SiteMap(_message.Message):
    __slots__ = ("site_id", "version", "map", "std", "calibrated", "interval_low", "interval_high", "interval_coverage", "measurement_count", "measured_cells", "built_unix_ms", "incremental", "network_evaluations", "build_seconds", "model_name", "model_version")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_LOW_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_HIGH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEASURED_CELLS_FIELD_NUMBER: _ClassVar[int]
    BUILT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    NETWORK_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    version: int
    map: _edge_pb2.Tensor
    std: _edge_pb2.Tensor
    calibrated: bool
    interval_low: _edge_pb2.Tensor
    interval_high: _edge_pb2.Tensor
    interval_coverage: float
    measurement_count: int
    measured_cells: int
    built_unix_ms: int
    incremental: bool
    network_evaluations: int
    build_seconds: float
    model_name: str
    model_version: str
    def __init__(self, site_id: _Optional[str] = ..., version: _Optional[int] = ..., map: _Optional[_Union[_edge_pb2.Tensor, _Mapping]] = ..., std: _Optional[_Union[_edge_pb2.Tensor, _Mapping]] = ..., calibrated: _Optional[bool] = ..., interval_low: _Optional[_Union[_edge_pb2.Tensor, _Mapping]] = ..., interval_high: _Optional[_Union[_edge_pb2.Tensor, _Mapping]] = ..., interval_coverage: _Optional[float] = ..., measurement_count: _Optional[int] = ..., measured_cells: _Optional[int] = ..., built_unix_ms: _Optional[int] = ..., incremental: _Optional[bool] = ..., network_evaluations: _Optional[int] = ..., build_seconds: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetMapResponse(_message.Message):
    __slots__ = ("map", "site_measurement_count")
    MAP_FIELD_NUMBER: _ClassVar[int]
    SITE_MEASUREMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    map: SiteMap
    site_measurement_count: int
    def __init__(self, map: _Optional[_Union[SiteMap, _Mapping]] = ..., site_measurement_count: _Optional[int] = ...) -> None: ...

class QueryPointsRequest(_message.Message):
    __slots__ = ("site_id", "positions")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    def __init__(self, site_id: _Optional[str] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ...) -> None: ...

class PointValue(_message.Message):
    __slots__ = ("building", "gain_db", "gain_std_db", "aoa_sine", "aoa_sine_std", "gain_db_low", "gain_db_high", "aoa_sine_low", "aoa_sine_high")
    BUILDING_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    GAIN_STD_DB_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_STD_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_LOW_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_HIGH_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_LOW_FIELD_NUMBER: _ClassVar[int]
    AOA_SINE_HIGH_FIELD_NUMBER: _ClassVar[int]
    building: bool
    gain_db: float
    gain_std_db: float
    aoa_sine: float
    aoa_sine_std: float
    gain_db_low: float
    gain_db_high: float
    aoa_sine_low: float
    aoa_sine_high: float
    def __init__(self, building: _Optional[bool] = ..., gain_db: _Optional[float] = ..., gain_std_db: _Optional[float] = ..., aoa_sine: _Optional[float] = ..., aoa_sine_std: _Optional[float] = ..., gain_db_low: _Optional[float] = ..., gain_db_high: _Optional[float] = ..., aoa_sine_low: _Optional[float] = ..., aoa_sine_high: _Optional[float] = ...) -> None: ...

class QueryPointsResponse(_message.Message):
    __slots__ = ("values", "map_version", "calibrated", "interval_coverage")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[PointValue]
    map_version: int
    calibrated: bool
    interval_coverage: float
    def __init__(self, values: _Optional[_Iterable[_Union[PointValue, _Mapping]]] = ..., map_version: _Optional[int] = ..., calibrated: _Optional[bool] = ..., interval_coverage: _Optional[float] = ...) -> None: ...

class WatchMapRequest(_message.Message):
    __slots__ = ("site_id", "after_version", "output_units")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_UNITS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    after_version: int
    output_units: _edge_pb2.OutputUnits
    def __init__(self, site_id: _Optional[str] = ..., after_version: _Optional[int] = ..., output_units: _Optional[_Union[_edge_pb2.OutputUnits, str]] = ...) -> None: ...

class WatchMapResponse(_message.Message):
    __slots__ = ("map",)
    MAP_FIELD_NUMBER: _ClassVar[int]
    map: SiteMap
    def __init__(self, map: _Optional[_Union[SiteMap, _Mapping]] = ...) -> None: ...
