"""A small Python client of the edge service, for base-station integrators.

    with EdgeClient("edge-host:50051", token="...") as client:
        result = client.construct(y, operators.Downsample(2), sampler="diffpir", steps=10, samples=4)
        result.map, result.std, result.timings
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


class EdgeClient:
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
        self.stub = api.services.EdgeServiceStub(self.channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

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

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
