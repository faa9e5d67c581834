"""The ckm.edge.v1.EdgeService servicer: convert a request into a planned job, hand it to the batcher,
convert the result back.

It holds no construction logic: runtime.executor plans (checks) the job and runs it in the
batcher's batches, exactly as it does a local construction; the request's choices meet the
model's recommendations in runtime.recommend. Every client fault is
INVALID_ARGUMENT (or NOT_FOUND, RESOURCE_EXHAUSTED) with the field named; a request whose client
cancelled or whose deadline passed ends CANCELLED or DEADLINE_EXCEEDED, counted as such.

`add_to_server` registers the service with request decoding of our own, so that a message that
does not parse is INVALID_ARGUMENT (gRPC's default answer is INTERNAL) and one over the size limit
RESOURCE_EXHAUSTED, both counted in `ckm_rejected_requests_total`.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ckm_edge.runtime import api, codec, defaults, executor, operators, recommend
from ckm_edge.runtime.api import InvalidArgument, pb
from ckm_edge.runtime.batcher import Batcher, Cancelled, Pending, QueueFull, ShuttingDown, TooLarge
from ckm_edge.runtime.engine import EngineError
from ckm_edge.runtime.metrics import Metrics
from ckm_edge.runtime.operators import OperatorError
from ckm_edge.runtime.package import PackageError
from ckm_edge.runtime.repository import LoadedModel, ModelRepository, adapts
from ckm_edge.runtime.sampler import SAMPLERS, SamplerError, network_evaluations, spec_for
from ckm_edge.runtime.schedule import ScheduleError
from ckm_edge.runtime.site import SiteError

log = logging.getLogger("ckm.edge.servicer")
PRECISIONS = {pb.PRECISION_UNSPECIFIED: "fp32", pb.PRECISION_FP32: "fp32", pb.PRECISION_FP16: "fp16", pb.PRECISION_INT8: "int8"}
OUTPUT_UNITS = (pb.OUTPUT_UNITS_UNSPECIFIED, pb.OUTPUT_UNITS_PIXELS, pb.OUTPUT_UNITS_PHYSICAL)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_samples: int = defaults.MAX_BATCH  # posterior samples (never more than a batch holds)
    max_evaluations: int = defaults.MAX_EVALUATIONS  # network evaluations of one request: samples x per-sample calls
    memory_budget: bool = True  # measure per-row memory for the batcher's budget
    deterministic: bool = False  # the server's engines run deterministically (reported back)


class Status(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _gone(context) -> Status:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed")
    return Status(grpc.StatusCode.CANCELLED, "the request was cancelled")


class EdgeServicer:
    def __init__(self, repo: ModelRepository, batcher: Batcher, metrics: Metrics, limits: Limits = Limits()):
        self.repo, self.batcher, self.metrics, self.limits = repo, batcher, metrics, limits

    # -- RPCs -------------------------------------------------------------------------------------
    def Construct(self, request, context):
        with _Handling(self.metrics, "Construct", context) as handling:
            pending = self._pending(request, context)
            handling.model = pending.job.model
            self._submit(pending)
            self._wait(pending, context)
            return self._response(pending, request)

    def ConstructStream(self, request, context):
        with _Handling(self.metrics, "ConstructStream", context) as handling:
            progress: queue.Queue = queue.Queue()
            pending = self._pending(request.request, context, request.progress_interval)
            pending.job.on_step = lambda done, total, residual: progress.put(
                pb.Progress(step=done, total_steps=total, residual_norm=residual))
            handling.model = pending.job.model
            self._submit(pending)
            while not pending.done.is_set() or not progress.empty():
                try:
                    yield pb.ConstructStreamResponse(progress=progress.get(timeout=0.05))
                except queue.Empty:
                    if not context.is_active():
                        raise _gone(context) from None
            self._wait(pending, context)
            yield pb.ConstructStreamResponse(result=self._response(pending, request.request))

    def ListModels(self, request, context):
        with _Handling(self.metrics, "ListModels", context):
            return pb.ListModelsResponse(models=[pb.ModelVersion(name=m.package.name, version=m.package.version,
                                                                 ready=True, adapts=adapts(m.package))
                                                 for m in self.repo.models()])

    def GetModelMetadata(self, request, context):
        with _Handling(self.metrics, "GetModelMetadata", context):
            try:
                model = self.repo.resolve(request.model_name, request.model_version)
            except LookupError as e:
                model = self.repo.find(request.model_name, request.model_version)  # a site adapter, by exact name
                if model is None:
                    raise Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
            return metadata(model, self.limits)

    # -- requests -> jobs -------------------------------------------------------------------------
    def _pending(self, req, context, interval: int = 1) -> Pending:
        try:
            model = self.repo.resolve(req.model_name, req.model_version)
        except LookupError as e:
            raise Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
        pkg = model.package
        adapter, lam = self._adapter(req, model)
        precision = PRECISIONS.get(req.precision)
        if precision is None:
            raise InvalidArgument(f"precision {req.precision} is not a known Precision value")
        if precision not in pkg.precisions:
            raise InvalidArgument(f"precision: model {pkg.name} {pkg.version} has no {precision} variant (has {pkg.precisions})")
        if adapter is not None and precision not in adapter.package.precisions:
            raise InvalidArgument(f"precision: site adapter {adapter.package.name} {adapter.package.version} has no "
                                  f"{precision} variant (has {adapter.package.precisions})")
        if req.output_units not in OUTPUT_UNITS:
            raise InvalidArgument(f"output_units {req.output_units} is not a known OutputUnits value")
        if not (np.isfinite(req.noise_sigma) and 0 <= req.noise_sigma <= 1):
            raise InvalidArgument(f"noise_sigma must be in [0, 1] pixels, got {req.noise_sigma}")
        if req.respacing not in ("",) + executor.RESPACINGS:
            raise InvalidArgument(f"respacing must be one of {', '.join(executor.RESPACINGS)} (empty: ddpm), "
                                  f"got {req.respacing!r}")
        shape = (2, pkg.tile_size, pkg.tile_size)
        if not req.HasField("operator"):
            raise InvalidArgument("operator is required")
        op, output_shape = api.fitted_operator_from_proto(req.operator, "operator", shape)
        if not req.HasField("observation"):
            raise InvalidArgument("observation is required")
        y = api.to_numpy(req.observation, "observation").astype(np.float32)
        site = api.site_from_proto(req.site) if req.HasField("site") else None
        config = self._config(req, pkg, op, site is not None and site.building is not None)
        try:
            job = executor.plan(model, op, y, shape, config, sigma=api.decimal(req.noise_sigma), site=site,
                                precision=precision, adapter=adapter, adapter_lambda=lam, output_shape=output_shape)
        except OperatorError as e:
            raise InvalidArgument(f"observation: {e}") from None
        except SiteError as e:
            raise InvalidArgument(f"site.{e.part}: {e}" if e.part else f"site: {e}") from None
        except ScheduleError as e:
            raise InvalidArgument(f"steps: {e}") from None
        job.alive, job.progress_interval = context.is_active, max(1, interval)
        return Pending(job, self._row_bytes(job))

    def _config(self, req, pkg, op, site: bool) -> executor.ConstructConfig:
        """The request's sampler config, steps, samples, seed and respacing (runtime.recommend.resolve),
        with the DPS-only fields (zeta, corrector_steps, jacobian_free) as shorthands for "dps"."""
        shorthand = {}
        if req.HasField("zeta"):
            shorthand["zeta"] = float(req.zeta)
        if req.corrector_steps:
            shorthand["corrector_steps"] = int(req.corrector_steps)
        if req.jacobian_free:
            shorthand["jacobian_free"] = True
        if req.sampler and req.sampler not in SAMPLERS:
            raise InvalidArgument(f"sampler: unknown sampler {req.sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
        try:
            name, params = recommend.with_dps_shorthand(req.sampler or None, dict(req.sampler_parameters), shorthand)
        except SamplerError as e:
            raise InvalidArgument(str(e)) from None
        if name == "dps":  # the gRPC API's DPS: no corrector unless asked (corrector_steps is 0 when unset)
            params = {"corrector_steps": 0, **params}
        max_samples = min(defaults.MAX_SAMPLES, self.limits.max_samples)
        try:
            cfg, steps, samples = recommend.resolve(pkg.manifest.samplers, op, name, params, req.steps or None,
                                                    req.samples or None, site)
        except SamplerError as e:
            raise InvalidArgument(f"sampler_parameters: {e}") from None
        if not req.samples:  # a recommendation never asks for more rows than a batch holds
            samples = min(samples, max_samples)
        if not 1 <= samples <= max_samples:
            raise InvalidArgument(f"samples must be in [1, {max_samples}], got {req.samples}")
        n_max = min(defaults.MAX_STEPS, len(pkg.schedule()))
        if not 1 <= steps <= n_max:
            raise InvalidArgument(f"steps must be in [1, {n_max}], got {req.steps}")
        work = network_evaluations(cfg, steps, samples)
        if work > self.limits.max_evaluations:
            raise InvalidArgument(f"steps: {steps} steps x {samples} samples ask for {work} network evaluations; "
                                  f"this server allows at most {self.limits.max_evaluations} per request")
        return executor.ConstructConfig(steps, samples, int(req.seed), req.respacing or "ddpm", cfg)

    def _adapter(self, req, model: LoadedModel) -> tuple[LoadedModel | None, object]:
        if not req.adapter_name:
            if req.adapter_version:
                raise InvalidArgument("adapter_version given without adapter_name")
            return None, None
        try:
            return self.repo.resolve_adapter(req.adapter_name, req.adapter_version, model)
        except LookupError as e:
            raise Status(grpc.StatusCode.NOT_FOUND, str(e)) from None
        except PackageError as e:
            raise Status(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None

    def _row_bytes(self, job: executor.Job) -> int:
        return job.row_bytes() if self.limits.memory_budget else 0

    def _submit(self, pending: Pending) -> None:
        try:
            self.batcher.submit(pending)
        except QueueFull as e:
            self.metrics.rejected.labels("queue_full").inc()
            raise Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except TooLarge as e:
            self.metrics.rejected.labels("memory").inc()
            raise Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None

    def _wait(self, pending: Pending, context) -> None:
        while not pending.done.wait(timeout=0.05):
            if not context.is_active():
                raise _gone(context)
        if isinstance(pending.error, Cancelled):
            raise _gone(context)
        if isinstance(pending.error, ShuttingDown):
            raise Status(grpc.StatusCode.UNAVAILABLE, str(pending.error))
        if pending.error is not None:
            raise Status(grpc.StatusCode.INTERNAL, f"construction failed: {pending.error}")

    # -- results -> messages ----------------------------------------------------------------------
    def _response(self, pending: Pending, req) -> object:
        job, result = pending.job, pending.result
        out, std, interval = result.mean, result.std, result.interval()
        if req.output_units == pb.OUTPUT_UNITS_PHYSICAL:
            out, std = executor.in_physical_units(out, std)
            if interval is not None:
                interval = executor.interval_in_physical_units(result.mean, *interval)
        pkg = job.model.package
        resp = pb.ConstructResponse(map=api.from_numpy(out.astype(np.float32)), residual_norm=result.residual,
                                    model_name=pkg.name, model_version=pkg.version, steps=job.config.steps,
                                    timings=pb.Timings(queue_seconds=pending.started - pending.enqueued,
                                                       sampling_seconds=pending.finished - pending.started,
                                                       total_seconds=time.perf_counter() - pending.enqueued),
                                    sampler=spec_for(job.sampler).name, samples=job.samples,
                                    deterministic=self.limits.deterministic,
                                    site_conditioned=job.site is not None and pkg.condition_channels > 0)
        if std is not None:
            resp.std.CopyFrom(api.from_numpy(std.astype(np.float32)))
        if interval is not None:
            resp.calibrated, resp.interval_coverage = True, result.coverage
            resp.interval_low.CopyFrom(api.from_numpy(interval[0].astype(np.float32)))
            resp.interval_high.CopyFrom(api.from_numpy(interval[1].astype(np.float32)))
        resp.sampler_parameters.update(sampler_parameters(job.sampler))
        if job.adapter is not None:
            resp.adapter_name, resp.adapter_version = job.adapter.package.name, job.adapter.package.version
        return resp


def metadata(model: LoadedModel, limits: Limits) -> object:
    pkg = model.package
    accuracy = [pb.TaskAccuracy(precision=p, task=t, gain_rmse_db=v.gain_rmse_db, aoa_sine_rmse=v.aoa_sine_rmse)
                for p, rec in pkg.accuracy().records.items() for t, v in rec.tasks.items()]
    return pb.GetModelMetadataResponse(
        name=pkg.name, version=pkg.version, channels=list(pkg.manifest.channels), tile_size=pkg.tile_size,
        operators=list(operators.OPERATORS),
        precisions=pkg.precisions, schedule_json=json.dumps(pkg.manifest.schedule),
        max_steps=min(defaults.MAX_STEPS, len(pkg.schedule())), accuracy=accuracy, adapts=adapts(pkg),
        samplers=[_sampler_info(s) for s in SAMPLERS.values()],
        recommended=[pb.SamplerRecommendation(operator_kind=kind, sampler=r.sampler, steps=r.steps, samples=r.samples,
                                              parameters={k: float(v) for k, v in r.parameters.items()})
                     for kind, r in pkg.recommendations().items()],
        max_samples=min(defaults.MAX_SAMPLES, limits.max_samples), max_evaluations=limits.max_evaluations,
        max_operators=api.MAX_OPERATORS, deterministic=limits.deterministic,
        site_aware=pkg.condition_channels > 0, calibrated=pkg.manifest.uncertainty is not None,
        interval_coverage=pkg.manifest.uncertainty.coverage if pkg.manifest.uncertainty else 0.0,
        calibrated_kinds=sorted(pkg.manifest.uncertainty.kinds) if pkg.manifest.uncertainty else [],
        calibrated_constructions=_calibrated_constructions(pkg.manifest.uncertainty))


def _calibrated_constructions(u) -> list:
    """The constructions a package's kinds carry fits of their own at (runtime.uncertainty) that a
    request can run: not the living maps' warm-started rebuilds (SiteService), which no request makes."""
    out = []
    for kind, fit in sorted(u.kinds.items()) if u is not None else []:
        for v in fit.variants:
            c = v.fitted["construction"]
            if c.get("warm"):
                continue
            out.append(pb.SamplerRecommendation(operator_kind=kind, sampler=c["sampler"], steps=c["steps"], samples=c["samples"],
                                                parameters={k: float(x) for k, x in (c.get("parameters") or {}).items()}))
    return out


def sampler_parameters(cfg) -> dict[str, float]:
    """Every parameter of a sampler config as a number (switches 0/1), as the API reports them."""
    return {p["name"]: float(getattr(cfg, p["name"])) for p in spec_for(cfg).parameters()}


def _sampler_info(s) -> object:
    params = [pb.SamplerParameter(name=p["name"], type=p["type"], default_value=float(p["default"]), description=p["doc"])
              for p in s.parameters()]
    for msg, p in zip(params, s.parameters()):  # proto field names: min / max
        if p["low"] is not None:
            msg.min = float(p["low"])
        if p["high"] is not None:
            msg.max = float(p["high"])
    return pb.SamplerInfo(name=s.name, description=s.summary, default_steps=s.default_steps, parameters=params,
                          uses_network_vjp=s.needs_vjp(s.config()))


class _Handling:
    """Maps errors to status codes and records the RPC's metrics; `model` once a request resolved one."""

    CLIENT_FAULTS = (InvalidArgument, OperatorError, codec.CodecError, SiteError)

    def __init__(self, metrics: Metrics, method: str, context):
        self.metrics, self.method, self.context = metrics, method, context
        self.model: LoadedModel | None = None

    def __enter__(self) -> _Handling:
        self.start = time.perf_counter()
        self.metrics.rpc_started(self.method)
        return self

    def __exit__(self, exc_type, exc, tb):
        code = grpc.StatusCode.OK
        if isinstance(exc, Status):
            code = exc.code
        elif isinstance(exc, self.CLIENT_FAULTS):
            code = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(exc, GeneratorExit):  # the client went away mid-stream
            code = _gone(self.context).code
        elif isinstance(exc, (EngineError, PackageError)):
            code = grpc.StatusCode.UNAVAILABLE
        elif exc is not None:
            log.exception("unexpected error in %s", self.method)
            code = grpc.StatusCode.INTERNAL
        self.metrics.rpc_finished(self.method, code.name, time.perf_counter() - self.start)
        if self.model is not None:
            pkg = self.model.package
            self.metrics.model_requests.labels(pkg.name, pkg.version, code.name).inc()
        if exc is not None and code != grpc.StatusCode.OK and not isinstance(exc, GeneratorExit):
            self.context.abort(code, str(exc))
        return False


def add_to_server(servicer, server: grpc.Server, metrics: Metrics, max_message_bytes: int, service=None) -> None:
    """Register a service (default ckm.edge.v1.EdgeService; its descriptor otherwise, e.g. SiteService's),
    decoding requests ourselves (see module doc)."""
    from google.protobuf.message_factory import GetMessageClass

    service = service or pb.DESCRIPTOR.services_by_name["EdgeService"]
    handlers = {}
    for method in service.methods:
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        behaviour = _decoding(getattr(servicer, method.name), request_type, method.name, metrics, max_message_bytes,
                              method.server_streaming)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(behaviour, request_deserializer=None,
                                     response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _decoding(behaviour, request_type, method: str, metrics: Metrics, max_bytes: int, streaming: bool):
    def parse(raw: bytes, context):
        if len(raw) > max_bytes:
            reason, code = "size", grpc.StatusCode.RESOURCE_EXHAUSTED
            message = f"the request has {len(raw)} bytes, more than this server's limit of {max_bytes}"
        else:
            try:
                return request_type.FromString(raw)
            except DecodeError as e:
                reason, code = "decode", grpc.StatusCode.INVALID_ARGUMENT
                message = f"the request is not a valid {request_type.DESCRIPTOR.full_name} message: {e}"
        metrics.rejected.labels(reason).inc()
        metrics.requests.labels(method, code.name).inc()
        context.abort(code, message)

    if streaming:
        def stream(raw, context):
            yield from behaviour(parse(raw, context), context)
        return stream
    return lambda raw, context: behaviour(parse(raw, context), context)
