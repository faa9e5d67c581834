"""A small Python client of the edge service, for base-station integrators.

    with EdgeClient("edge-host:50051", token="...") as client:
        result = client.construct(y, operators.Downsample(2), sampler="diffpir", steps=10, samples=4)
        result.map, result.std, result.timings
    with SiteClient("edge-host:50051") as sites:            # living maps (the SiteService)
        sites.add("cell-17", positions, gain_db=gains)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ckm_edge.runtime import api, defaults
from ckm_edge.runtime.api import pb
from ckm_edge.runtime.operators import Operator
from ckm_edge.runtime.site import Site

_PRECISION = {"fp32": pb.PRECISION_FP32, "fp16": pb.PRECISION_FP16, "int8": pb.PRECISION_INT8}


@dataclass
class ClientResult:
    map: np.ndarray  # (2, H, W), pixels or physical units
    std: np.ndarray | None
    residual_norm: float
    model: str
    version: str
    steps: int
    timings: dict
    adapter: str = ""  # the site adapter composed with the model ("" = none)
    adapter_version: str = ""
    sampler: str = ""  # the sampler that ran, its parameters and the posterior samples drawn
    sampler_parameters: dict | None = None
    samples: int = 0
    deterministic: bool = False  # the server guarantees bitwise-reproducible maps (ConstructResponse.deterministic)
    site_conditioned: bool = False  # a site-aware model was told the request's site
    calibrated: bool = False  # std and the interval are calibrated (ConstructResponse.calibrated)
    interval: tuple[np.ndarray, np.ndarray] | None = None  # (low, high), each (2, H, W), same units as map
    interval_coverage: float = 0.0


class _Channel:
    """A channel to an edge server (TLS / mTLS, bearer token), closed with the client."""

    def __init__(self, target: str, *, token: str | None = None, root_certs: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None, max_message_bytes: int = 16 * 2**20):
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]
        if root_certs:
            creds = grpc.ssl_channel_credentials(
                Path(root_certs).read_bytes(),
                Path(client_key).read_bytes() if client_key else None,
                Path(client_cert).read_bytes() if client_cert else None)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EdgeClient(_Channel):
    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        self.stub = api.services.EdgeServiceStub(self.channel)

    def request(self, y: np.ndarray, op: Operator, *, model: str = "", version: str = "", sampler: str = "",
                sampler_parameters: dict | None = None, steps: int = 0, samples: int = 0, seed: int = 0,
                noise_sigma: float = defaults.NOISE_SIGMA, site=None, physical: bool = False,
                precision: str = "fp32", adapter: str = "", adapter_version: str = "", zeta: float | None = None,
                corrector_steps: int = 0, jacobian_free: bool = False, respacing: str = ""):
        """A ConstructRequest. `sampler` "" and steps/samples 0 take the model's recommendation for
        the operator; `site` is a runtime.site.Site (building layout and/or base station) or just the
        (H, W) building layout (bool or 0/1). zeta, corrector_steps and jacobian_free are the API's
        DPS-only shorthands; `respacing` "" is the server's default ("ddpm")."""
        req = pb.ConstructRequest(
            model_name=model, model_version=version, observation=api.from_numpy(np.asarray(y, np.float32)),
            operator=api.operator_to_proto(op), noise_sigma=noise_sigma, steps=steps, corrector_steps=corrector_steps,
            samples=samples, seed=seed, precision=_PRECISION[precision], jacobian_free=jacobian_free,
            output_units=pb.OUTPUT_UNITS_PHYSICAL if physical else pb.OUTPUT_UNITS_PIXELS,
            adapter_name=adapter, adapter_version=adapter_version, sampler=sampler, respacing=respacing,
            sampler_parameters={k: float(v) for k, v in (sampler_parameters or {}).items()})
        if zeta is not None:
            req.zeta = zeta
        if isinstance(site, Site):
            req.site.CopyFrom(api.site_to_proto(site))
        elif site is not None:  # sent as given: the server checks it is 0/1
            req.site.building.CopyFrom(api.from_numpy(np.asarray(site).astype(np.uint8)))
        return req

    def construct(self, y: np.ndarray, op: Operator, *, timeout: float | None = None, **kwargs) -> ClientResult:
        resp = self.stub.Construct(self.request(y, op, **kwargs), timeout=timeout, metadata=self._metadata)
        return _result(resp)

    def construct_stream(self, y: np.ndarray, op: Operator, *, progress_interval: int = 1, timeout: float | None = None, **kwargs):
        """Yields ("progress", (step, total, residual)) events, then ("result", ClientResult)."""
        req = pb.ConstructStreamRequest(request=self.request(y, op, **kwargs), progress_interval=progress_interval)
        for event in self.stub.ConstructStream(req, timeout=timeout, metadata=self._metadata):
            if event.HasField("progress"):
                p = event.progress
                yield "progress", (p.step, p.total_steps, p.residual_norm)
            else:
                yield "result", _result(event.result)

    def list_models(self) -> list[tuple[str, str]]:
        """(name, version) of every served model and site adapter."""
        return [(m.name, m.version) for m in self.stub.ListModels(pb.ListModelsRequest(), metadata=self._metadata).models]

    def metadata(self, model: str = "", version: str = ""):
        return self.stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name=model, model_version=version),
                                          metadata=self._metadata)



@dataclass
class SiteMapResult:
    """One version of a site's map (SiteMap), arrays decoded."""

    version: int
    map: np.ndarray  # (2, H, W), pixels or physical units
    std: np.ndarray
    interval: tuple[np.ndarray, np.ndarray] | None
    interval_coverage: float
    measurement_count: int
    incremental: bool
    network_evaluations: int
    build_seconds: float


class SiteClient(_Channel):
    """The SiteService: a site's living map (runtime.sites).

        with SiteClient("edge-host:50051") as sites:
            sites.create("cell-17", building=layout, base_station=(64.5, 10.5, 25.0), geometry=(x0, y0, 2.0, 0.0))
            sites.add("cell-17", positions, gain_db=gains, world=True)     # (N, 2) metres (x, y) or cells
            sites.map("cell-17").map; sites.query("cell-17", points)["gain_db"]
    """

    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        from ckm_edge.protos.ckm.edge.v1 import site_pb2, site_pb2_grpc

        self.pb = site_pb2
        self.stub = site_pb2_grpc.SiteServiceStub(self.channel)

    def create(self, site_id: str, *, building: np.ndarray | None = None, base_station: tuple | None = None,
               heights: np.ndarray | None = None, geometry: tuple | None = None, model: str = "", version: str = "",
               adapter: str = "", adapter_version: str = "", gain_noise_db: float = 0.0, aoa_noise: float = 0.0,
               rebuild_after_measurements: int = 0, rebuild_after_seconds: float = 0.0):
        """CreateSite; geometry = (origin_x_m, origin_y_m, cell_size_m, orientation_deg). Returns the
        CreateSiteResponse (site info, created)."""
        d = self.pb.SiteDefinition(site_id=site_id, model_name=model, model_version=version, adapter_name=adapter,
                                   adapter_version=adapter_version, default_gain_noise_db=gain_noise_db,
                                   default_aoa_noise=aoa_noise, policy=self.pb.SitePolicy(
                                       rebuild_after_measurements=rebuild_after_measurements,
                                       rebuild_after_seconds=rebuild_after_seconds))
        if building is not None or base_station is not None:
            site = Site(None if building is None else np.asarray(building, bool),
                        None if base_station is None else np.asarray(base_station, float),
                        None if heights is None else np.asarray(heights, float))
            d.site.CopyFrom(api.site_to_proto(site))
        if geometry is not None:
            x, y, cell, angle = geometry
            d.geometry.CopyFrom(self.pb.TileGeometry(origin_x_m=x, origin_y_m=y, cell_size_m=cell, orientation_deg=angle))
        return self.stub.CreateSite(self.pb.CreateSiteRequest(definition=d), metadata=self._metadata)

    def add(self, site_id: str, positions: np.ndarray, *, gain_db: np.ndarray | None = None,
            aoa_sine: np.ndarray | None = None, gain_noise_db: np.ndarray | float = 0.0, aoa_noise: np.ndarray | float = 0.0,
            timestamps_ms: np.ndarray | None = None, world: bool = False, batch_id: str = ""):
        """AddMeasurements: positions (N, 2), world (x_m, y_m) or cells (row, col); NaN in gain_db or
        aoa_sine = that channel not measured. Returns the AddMeasurementsResponse."""
        pos = np.asarray(positions, float).reshape(-1, 2)
        n = len(pos)
        col = lambda v: np.broadcast_to(np.asarray(np.nan if v is None else v, float), (n,))  # noqa: E731
        gain, aoa, gn, an = col(gain_db), col(aoa_sine), col(gain_noise_db), col(aoa_noise)
        when = np.zeros(n, np.int64) if timestamps_ms is None else np.asarray(timestamps_ms, np.int64)
        out = []
        for i in range(n):
            p = (self.pb.Position(world=self.pb.WorldPosition(x_m=pos[i, 0], y_m=pos[i, 1])) if world else
                 self.pb.Position(cell=self.pb.CellPosition(row=pos[i, 0], col=pos[i, 1])))
            m = self.pb.Measurement(position=p, gain_noise_db=gn[i], aoa_noise=an[i], timestamp_unix_ms=int(when[i]))
            if not np.isnan(gain[i]):
                m.gain_db = gain[i]
            if not np.isnan(aoa[i]):
                m.aoa_sine = aoa[i]
            out.append(m)
        return self.stub.AddMeasurements(self.pb.AddMeasurementsRequest(site_id=site_id, measurements=out, batch_id=batch_id),
                                         metadata=self._metadata)

    def get(self, site_id: str):
        return self.stub.GetSite(self.pb.GetSiteRequest(site_id=site_id), metadata=self._metadata).site

    def list(self) -> list:
        sites, token = [], ""
        while True:
            page = self.stub.ListSites(self.pb.ListSitesRequest(page_size=1000, page_token=token), metadata=self._metadata)
            sites += list(page.sites)
            token = page.next_page_token
            if not token:
                return sites

    def map(self, site_id: str, version: int = 0, physical: bool = True) -> SiteMapResult:
        units = pb.OUTPUT_UNITS_PHYSICAL if physical else pb.OUTPUT_UNITS_PIXELS
        resp = self.stub.GetMap(self.pb.GetMapRequest(site_id=site_id, version=version, output_units=units),
                                metadata=self._metadata)
        return _site_map(resp.map)

    def query(self, site_id: str, positions: np.ndarray, world: bool = False) -> dict[str, np.ndarray]:
        """QueryPoints: {field: (N,) array} of PointValue's fields, plus "map_version"."""
        pos = np.asarray(positions, float).reshape(-1, 2)
        points = [self.pb.Position(world=self.pb.WorldPosition(x_m=x, y_m=y)) if world else
                  self.pb.Position(cell=self.pb.CellPosition(row=x, col=y)) for x, y in pos]
        resp = self.stub.QueryPoints(self.pb.QueryPointsRequest(site_id=site_id, positions=points), metadata=self._metadata)
        names = [f.name for f in self.pb.PointValue.DESCRIPTOR.fields]
        out = {k: np.array([getattr(v, k) for v in resp.values]) for k in names}
        out["map_version"] = np.array(resp.map_version)
        return out

    def watch(self, site_id: str, after: int = 0, physical: bool = True, timeout: float | None = None):
        """Yields SiteMapResult per new map version (WatchMap)."""
        units = pb.OUTPUT_UNITS_PHYSICAL if physical else pb.OUTPUT_UNITS_PIXELS
        req = self.pb.WatchMapRequest(site_id=site_id, after_version=after, output_units=units)
        for resp in self.stub.WatchMap(req, timeout=timeout, metadata=self._metadata):
            yield _site_map(resp.map)

    def delete(self, site_id: str):
        return self.stub.DeleteSite(self.pb.DeleteSiteRequest(site_id=site_id), metadata=self._metadata)


def _site_map(m) -> SiteMapResult:
    big = 2**31
    interval = None
    if m.calibrated:
        interval = (api.to_numpy(m.interval_low, "interval_low", big, finite=False),
                    api.to_numpy(m.interval_high, "interval_high", big, finite=False))
    return SiteMapResult(m.version, api.to_numpy(m.map, "map", big, finite=False), api.to_numpy(m.std, "std", big, finite=False),
                         interval, m.interval_coverage, m.measurement_count, m.incremental, m.network_evaluations,
                         m.build_seconds)


def _result(resp) -> ClientResult:
    big = 2**31  # responses come from the server: no request-size limit, NaN marks buildings
    std = api.to_numpy(resp.std, "std", big, finite=False) if resp.HasField("std") else None
    t = resp.timings
    interval = None
    if resp.calibrated:
        interval = (api.to_numpy(resp.interval_low, "interval_low", big, finite=False),
                    api.to_numpy(resp.interval_high, "interval_high", big, finite=False))
    return ClientResult(api.to_numpy(resp.map, "map", big, finite=False), std, resp.residual_norm, resp.model_name, resp.model_version,
                        resp.steps, {"queue_s": t.queue_seconds, "sampling_s": t.sampling_seconds, "total_s": t.total_seconds},
                        resp.adapter_name, resp.adapter_version, resp.sampler, dict(resp.sampler_parameters), resp.samples,
                        resp.deterministic, resp.site_conditioned, resp.calibrated, interval, resp.interval_coverage)
