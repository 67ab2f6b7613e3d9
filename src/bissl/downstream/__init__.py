"""Downstream tasks: the classification loss L_D and its metrics."""

from bissl.downstream.tasks import DownstreamTask

__all__ = ["DownstreamTask"]
