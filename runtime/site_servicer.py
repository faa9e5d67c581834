"""The ckm.edge.v1.SiteService servicer: requests to runtime.sites calls, results to messages.

It holds no site logic (runtime.sites does; runtime.sitestore keeps the data). Errors map to
status codes: a bad field INVALID_ARGUMENT naming it, an unknown site or version NOT_FOUND, a site
id taken by another definition ALREADY_EXISTS, no map yet FAILED_PRECONDITION, a limit
RESOURCE_EXHAUSTED, the store unreachable or the server stopping UNAVAILABLE. Metrics per RPC as
for EdgeService (runtime.servicer._Handling).
"""

from __future__ import annotations

from contextlib import contextmanager

import grpc
import numpy as np

from ckm_edge.protos.ckm.edge.v1 import site_pb2 as spb
from ckm_edge.runtime import api, executor
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.batcher import ShuttingDown
from ckm_edge.runtime.servicer import OUTPUT_UNITS, Status, _Handling
from ckm_edge.runtime.sites import FIELDS, AlreadyExists, Exhausted, NotFound, Precondition, SiteManager
from ckm_edge.runtime.sitestore import SiteRow, StoreError

SITE_SERVICE = spb.DESCRIPTOR.services_by_name["SiteService"]
SITE_SERVICE_NAME = SITE_SERVICE.full_name
_CODES = ((NotFound, grpc.StatusCode.NOT_FOUND), (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
          (Precondition, grpc.StatusCode.FAILED_PRECONDITION), (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
          (ShuttingDown, grpc.StatusCode.UNAVAILABLE), (StoreError, grpc.StatusCode.UNAVAILABLE))


@contextmanager
def _statuses():
    """runtime.sites' errors -> Status with their code (InvalidArgument passes: _Handling maps it)."""
    try:
        yield
    except tuple(e for e, _ in _CODES) as e:
        code = next(c for t, c in _CODES if isinstance(e, t))
        raise Status(code, str(e)) from None


class SiteServicer:
    def __init__(self, sites: SiteManager, metrics):
        self.sites, self.metrics = sites, metrics

    def CreateSite(self, request, context):
        with _Handling(self.metrics, "CreateSite", context), _statuses():
            if not request.HasField("definition"):
                raise api.InvalidArgument("definition is required")
            row, created = self.sites.create(request.definition)
            return spb.CreateSiteResponse(site=self._info(row), created=created)

    def GetSite(self, request, context):
        with _Handling(self.metrics, "GetSite", context), _statuses():
            return spb.GetSiteResponse(site=self._info(self.sites.get(request.site_id)))

    def ListSites(self, request, context):
        with _Handling(self.metrics, "ListSites", context), _statuses():
            rows, token = self.sites.list(request.page_size, request.page_token)
            return spb.ListSitesResponse(sites=[self._info(r) for r in rows], next_page_token=token)

    def DeleteSite(self, request, context):
        with _Handling(self.metrics, "DeleteSite", context), _statuses():
            measurements, maps = self.sites.delete(request.site_id)
            return spb.DeleteSiteResponse(measurements_deleted=measurements, maps_deleted=maps)

    def AddMeasurements(self, request, context):
        with _Handling(self.metrics, "AddMeasurements", context), _statuses():
            accepted, count, version, duplicate = self.sites.add(request.site_id, request.measurements, request.batch_id)
            return spb.AddMeasurementsResponse(accepted=accepted, measurement_count=count, map_version=version,
                                               duplicate=duplicate)

    def GetMap(self, request, context):
        with _Handling(self.metrics, "GetMap", context), _statuses():
            _units(request.output_units)
            m, row = self.sites.get_map(request.site_id, request.version)
            return spb.GetMapResponse(map=site_map(m, request.output_units), site_measurement_count=row.measurement_count)

    def QueryPoints(self, request, context):
        with _Handling(self.metrics, "QueryPoints", context), _statuses():
            cached, points = self.sites.query(request.site_id, request.positions)
            values = [spb.PointValue(building=b, **dict(zip(FIELDS, v))) for b, v in points]
            return spb.QueryPointsResponse(values=values, map_version=cached.version, calibrated=cached.calibrated,
                                           interval_coverage=cached.coverage if cached.calibrated else 0.0)

    def WatchMap(self, request, context):
        with _Handling(self.metrics, "WatchMap", context), _statuses():
            _units(request.output_units)
            for m in self.sites.watch(request.site_id, request.after_version, context.is_active):
                yield spb.WatchMapResponse(map=site_map(m, request.output_units))

    def _info(self, row: SiteRow):
        return spb.SiteInfo(definition=self.sites.definition(row), measurement_count=row.measurement_count,
                            map_version=row.map_version, map_measurement_count=row.map_measurement_count,
                            stale=row.stale, created_unix_ms=row.created_ms)


def _units(units: int) -> None:
    if units not in OUTPUT_UNITS:
        raise api.InvalidArgument(f"output_units {units} is not a known OutputUnits value")


def site_map(m, units: int):
    """A stored map version (runtime.sitestore.MapRow) -> SiteMap in the requested units."""
    from ckm_edge.runtime import uncertainty

    mean, std = m.mean, m.std
    interval = uncertainty.interval(mean, std, uncertainty.z_of(m.coverage)) if m.calibrated else None
    if units == pb.OUTPUT_UNITS_PHYSICAL:
        out, std = executor.in_physical_units(mean, std)
        if interval is not None:
            interval = executor.interval_in_physical_units(mean, *interval)
    else:
        out = mean
    msg = spb.SiteMap(site_id=m.site_id, version=m.version, map=api.from_numpy(np.asarray(out, np.float32)),
                      std=api.from_numpy(np.asarray(std, np.float32)), calibrated=m.calibrated,
                      measurement_count=m.measurement_count, measured_cells=m.measured_cells, built_unix_ms=m.built_ms,
                      incremental=m.incremental, network_evaluations=m.evaluations, build_seconds=m.seconds,
                      model_name=m.model_name, model_version=m.model_version)
    if interval is not None:
        msg.interval_low.CopyFrom(api.from_numpy(interval[0].astype(np.float32)))
        msg.interval_high.CopyFrom(api.from_numpy(interval[1].astype(np.float32)))
        msg.interval_coverage = m.coverage
    return msg
