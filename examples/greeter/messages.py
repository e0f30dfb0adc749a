"""The greeter's request and reply (the seeds' HelloRequest / HelloResponse, as pydantic)."""

from __future__ import annotations

from pydantic import BaseModel


class HelloRequest(BaseModel):
    name: str


class HelloReply(BaseModel):
    greeting: str
