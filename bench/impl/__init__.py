"""One module per (broker, implementation); each exposes the workloads it supports.

A workload is ``async def NAME(url: str, n: int, size: int) -> channels.benchmark.Result``
with NAME in ``publish_confirm``, ``publish_batch``, ``consume``, ``latency``.
"""
