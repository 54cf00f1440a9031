"""GET /metrics: Prometheus's text format, read from Redis at each scrape (fishersft.service.metrics), so any API
process answers for all of them and for every worker; with the queues' depth and the live workers read live."""

from collections.abc import Iterator
from itertools import accumulate
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis import Redis
from rq import Queue

from app import deps
from app.errors import documented
from fishersft.service import metrics
from fishersft.service.monitor import live_workers
from fishersft.service.protocol import JOB_SERIALIZER
from fishersft.service.settings import Settings

router = APIRouter(tags=["health"])


class ServiceCollector(Collector):
    """The service's metrics as Prometheus families, read when collected."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings

    def collect(self) -> Iterator[Metric]:
        for counter in metrics.COUNTERS:
            counts = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            found = metrics.read_counter(self.redis, counter)
            if not counter.labels:
                found.setdefault((), 0)  # one series, there from the start
            for labels, value in sorted(found.items()):
                counts.add_metric(labels, value)
            yield counts
        for histogram in metrics.HISTOGRAMS:
            family = HistogramMetricFamily(histogram.name, histogram.help, labels=histogram.labels)
            bounds = [floatToGoString(b) for b in histogram.buckets] + ["+Inf"]
            for labels, observed in sorted(metrics.read_histogram(self.redis, histogram).items()):
                cumulative = [float(c) for c in accumulate(observed.buckets)]
                family.add_metric(labels, list(zip(bounds, cumulative, strict=True)), sum_value=observed.sum)
            yield family
        depth = GaugeMetricFamily(
            "fishersft_queue_depth", "Jobs waiting for a worker in each RQ queue.", labels=["queue"]
        )
        for name in dict.fromkeys((self.settings.queue, self.settings.training_queue)):  # once, if the same
            depth.add_metric([name], Queue(name, connection=self.redis, serializer=JOB_SERIALIZER).count)
        yield depth
        yield GaugeMetricFamily(
            "fishersft_workers_live",
            "Live workers (idle with a fresh heartbeat, or busy with a live job), as /readyz counts them.",
            value=live_workers(self.redis),
        )


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the whole service",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
        **documented(401, 422, 503),
        401: {**documented(401)[401], "description": "Missing or wrong metrics token (when one is configured)."},
    },
    dependencies=[Depends(deps.authorize_metrics)],
)
def get_metrics(
    redis: Annotated[Redis, Depends(deps.redis)], settings: Annotated[Settings, Depends(deps.settings)]
) -> Response:
    """Jobs ended by kind and status, job and phase durations, tokens embedded and bytes uploaded, counted in Redis
    by every API process and worker; queue depth and live workers, read now. Open, like /readyz (it holds no
    data), unless FISHERSFT_METRICS_TOKEN is set: then `Authorization: Bearer <that token>`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(redis, settings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
