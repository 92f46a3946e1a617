"""Building blocks of the operator's API models (``spec.py``, ``backup_spec.py``): the model
base (camelCase on the wire, unknown fields refused, frozen), the name and duration
patterns the CRDs state, and the status condition."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# A DNS-1035 label: a Service name (the FederationCluster's name becomes one).
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A DNS-1123 label: a Job's name (it is the value of the pods' job-name label).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None
